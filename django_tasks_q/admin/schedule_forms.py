"""The ``PeriodicTask`` admin form: task name with suggestions, checked JSON, the schedule inline.

Staff pick a schedule kind (interval, crontab, clocked, solar) and fill its
fields on the task's own page; nobody has to create a schedule row first and
then find it in a select. On save the form finds the row with exactly those
fields, or creates it, and points the task at it -- one foreign key set, the
other three cleared. Schedule rows are shared, so editing a task's schedule
never changes another task's.

Validation is the models': the schedule row's ``clean_fields()`` and
``clean()`` (so an invalid crontab field is an error on that field), and
nothing is written -- not even a schedule row -- unless the whole form is valid.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, cast

from django import forms
from django.contrib.admin import widgets
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils.html import format_html, format_html_join

from ..beat.entries import SCHEDULE_COLUMNS
from ..core.registry import registry
from ..models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from ..models.schedules import SCHEDULE_FIELDS, ScheduleRow

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups, _FieldOpts

SCHEDULE_MODELS: dict[str, type[ScheduleRow]] = {
    "interval": IntervalSchedule,
    "crontab": CrontabSchedule,
    "clocked": ClockedSchedule,
    "solar": SolarSchedule,
}
KIND_CHOICES = [
    ("interval", "Interval: every N seconds, minutes, hours or days"),
    ("crontab", "Crontab: minute, hour, day fields in a timezone"),
    ("clocked", "Clocked: once, at a given time"),
    ("solar", "Solar: at sunrise, sunset, ... at a place"),
]


class TaskNameInput(forms.TextInput):
    """A text input suggesting the task names registered in this process (an HTML ``<datalist>``).

    Any other name may still be typed: a task can exist only on the workers.
    """

    def __init__(self, attrs: dict | None = None):
        super().__init__({"class": "vTextField", "autocomplete": "off", **(attrs or {})})

    def render(self, name, value, attrs=None, renderer=None):
        list_id = f"{(attrs or {}).get('id') or name}_names"
        html = super().render(name, value, {**(attrs or {}), "list": list_id}, renderer)
        options = format_html_join("", '<option value="{}"></option>', ((n,) for n in registry.names()))
        return html + format_html('<datalist id="{}">{}</datalist>', list_id, options)


class JSONValueField(forms.JSONField):
    """JSON text that must decode to ``kind`` (list or dict); empty means ``kind()``."""

    KIND_NAMES: ClassVar[dict[type, str]] = {list: "list, e.g. [1, 2]", dict: 'object, e.g. {"day": "monday"}'}

    def __init__(self, *, kind: type, **kwargs: Any):
        self.kind = kind
        kwargs.setdefault("widget", widgets.AdminTextareaWidget(attrs={"rows": 2}))
        super().__init__(encoder=DjangoJSONEncoder, required=False, **kwargs)

    def to_python(self, value: Any) -> Any:
        if value in self.empty_values:
            return self.kind()
        if isinstance(value, str) and not self.disabled:
            try:
                json.loads(value, cls=self.decoder)
            except json.JSONDecodeError as exc:
                raise ValidationError("not valid JSON: %(error)s", code="invalid", params={"error": exc}) from exc
        converted = super().to_python(value)
        if not isinstance(converted, self.kind):
            raise ValidationError("must be a JSON %(kind)s; got %(got)s", code="invalid_type",
                                  params={"kind": self.KIND_NAMES[self.kind], "got": _json_type(converted)})
        return converted


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _column(model: type[ScheduleRow], name: str, **kwargs: Any) -> forms.Field:
    """The schedule model's own form field, optional here: only the chosen kind's fields are required."""
    field = cast("models.Field[Any, Any]", model._meta.get_field(name))  # a concrete column, not a relation
    return cast(forms.Field, field.formfield(required=False, **kwargs))  # None only for non-editable fields


def _existing(model: type[ScheduleRow], values: dict[str, Any]) -> ScheduleRow | None:
    """The schedule row with exactly ``values``; the oldest if there are several (crontabs may repeat)."""
    return model.objects.filter(**values).order_by("pk").first()


def find_or_create(model: type[ScheduleRow], values: dict[str, Any]) -> ScheduleRow:
    """The schedule row with exactly ``values``, created if there is none."""
    return _existing(model, values) or model.objects.get_or_create(**values)[0]


class PeriodicTaskForm(forms.ModelForm):
    args = JSONValueField(kind=list, help_text="JSON list of positional arguments, e.g. [1, 2]")
    kwargs = JSONValueField(kind=dict, help_text='JSON object of keyword arguments, e.g. {"day": "monday"}')

    schedule_kind = forms.ChoiceField(label="Schedule", choices=KIND_CHOICES, initial="interval",
                                      widget=forms.RadioSelect)
    every = _column(IntervalSchedule, "every", min_value=1, widget=widgets.AdminIntegerFieldWidget)
    period = _column(IntervalSchedule, "period")
    minute = _column(CrontabSchedule, "minute", widget=widgets.AdminTextInputWidget, help_text="0-59, e.g. 30 or */15")
    hour = _column(CrontabSchedule, "hour", widget=widgets.AdminTextInputWidget, help_text="0-23, e.g. 7 or 9-17")
    day_of_week = _column(CrontabSchedule, "day_of_week", widget=widgets.AdminTextInputWidget)
    day_of_month = _column(CrontabSchedule, "day_of_month", widget=widgets.AdminTextInputWidget,
                           help_text="1-31")
    month_of_year = _column(CrontabSchedule, "month_of_year", widget=widgets.AdminTextInputWidget,
                            help_text="1-12")
    timezone = _column(CrontabSchedule, "timezone", widget=widgets.AdminTextInputWidget)
    clocked_time = forms.SplitDateTimeField(required=False, widget=widgets.AdminSplitDateTime,
                                            help_text="run once at this time")
    event = _column(SolarSchedule, "event")
    latitude = _column(SolarSchedule, "latitude", help_text="-90 to 90")
    longitude = _column(SolarSchedule, "longitude", help_text="-180 to 180")

    class Meta:
        model = PeriodicTask
        exclude = list(SCHEDULE_FIELDS)  # set by save() from the inline schedule fields
        widgets = {"task": TaskNameInput}
        help_texts = {"task": "pick a task registered in this process, or type the name of one that only "
                              "the workers import"}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: (kind, row) once clean() succeeds; the row is unsaved if no such schedule exists yet
        self.schedule: tuple[str, ScheduleRow] | None = None
        if "priority" in self.fields:
            self.fields["priority"].validators.append(MaxValueValidator(255))
        kind = next((k for k in SCHEDULE_FIELDS if getattr(self.instance, f"{k}_id", None) is not None), None)
        if kind is not None:  # editing: start from the task's current schedule
            row = getattr(self.instance, kind)
            self.initial.setdefault("schedule_kind", kind)
            for column in SCHEDULE_COLUMNS[kind]:
                self.initial.setdefault(column, getattr(row, column))

    def clean(self) -> dict[str, Any]:
        cleaned = cast("dict[str, Any]", super().clean())  # ModelForm.clean() returns cleaned_data
        kind = cleaned.get("schedule_kind")
        if kind:
            for other, columns in SCHEDULE_COLUMNS.items():
                if other != kind:  # the other kinds' fields are ignored, typos and all
                    for column in columns:
                        self._errors.pop(column, None)  # type: ignore[attr-defined]  # private Django form attribute
            row = self._schedule_row(kind, cleaned)
            self.schedule = None if row is None else (kind, row)
        return cleaned

    def _schedule_row(self, kind: str, cleaned: dict[str, Any]) -> ScheduleRow | None:
        """The chosen kind's row, validated by the model; None (with field errors) if invalid."""
        columns = SCHEDULE_COLUMNS[kind]
        if any(self.has_error(column) for column in columns):
            return None
        values = {column: cleaned.get(column) for column in columns}
        missing = [column for column, value in values.items() if value in (None, "")]
        for column in missing:
            self.add_error(column, f"required by the {kind} schedule")
        if missing:
            return None
        row = SCHEDULE_MODELS[kind](**values)
        try:
            row.clean_fields()
            row.clean()
        except ValidationError as error:
            self.add_error(None, error)  # keyed by column: the form's field names
            return None
        values = {column: getattr(row, column) for column in columns}  # as the model normalised them
        return _existing(SCHEDULE_MODELS[kind], values) or row

    def _post_clean(self) -> None:
        if self.schedule is not None:
            self._point_at(*self.schedule)
        super()._post_clean()  # type: ignore[misc]  # private Django form method

    def _update_errors(self, errors: ValidationError) -> None:
        # PeriodicTask.clean() checks the schedule foreign keys by id. This form sets
        # exactly one in save() (its row may not exist until then), or already shows
        # an error on the schedule fields, so those errors say nothing new -- and the
        # form has no field of that name to put them on. (The model's later checks,
        # args/kwargs types and priority, are the form fields' own checks too.)
        if hasattr(errors, "error_dict"):
            for name in SCHEDULE_FIELDS:
                errors.error_dict.pop(name, None)
            if not errors.error_dict:
                return
        super()._update_errors(errors)  # type: ignore[misc]  # private Django form method

    def _point_at(self, kind: str, row: ScheduleRow) -> None:
        for name in SCHEDULE_FIELDS:
            setattr(self.instance, name, row if name == kind else None)

    def save(self, commit: bool = True) -> PeriodicTask:
        """Save the task; its schedule row is found or created first, even with ``commit=False``."""
        if self.errors or self.schedule is None:
            raise ValueError("the form is not valid; nothing was saved")
        kind, row = self.schedule
        if row.pk is None:
            row = find_or_create(type(row), {column: getattr(row, column) for column in SCHEDULE_COLUMNS[kind]})
        self._point_at(kind, row)
        return super().save(commit)


def kind_fieldsets() -> list[tuple[str, _FieldOpts]]:
    """Admin fieldsets for the inline schedule: the kind, then one fieldset per kind."""
    sets: list[tuple[str, _FieldOpts]] = [("Schedule", {"fields": ["schedule_kind"]})]
    for kind, label in KIND_CHOICES:
        fields: _FieldGroups = list(SCHEDULE_COLUMNS[kind])
        if kind == "crontab":
            fields = [("minute", "hour"), ("day_of_week", "day_of_month", "month_of_year"), "timezone"]
        sets.append((label.split(":")[0] + " schedule", {"fields": fields,
                                                          "classes": ["schedule-fields", f"schedule-{kind}"]}))
    return sets
