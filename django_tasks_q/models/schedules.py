"""Periodic task models: four schedule kinds and the ``PeriodicTask`` that uses one.

Validation lives in ``clean()`` (for forms and the admin) and in database
constraints (for everything else); ``save()`` does no checking. The pure
schedule arithmetic lives in :mod:`django_tasks_q.beat.schedules`: each
schedule row turns itself into one of those values with ``as_schedule()``.
"""

from __future__ import annotations

from typing import Any, TypeAlias, Union

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q


def _invalid(error) -> ValidationError:
    field = getattr(error, "field", None)
    return ValidationError({field: str(error)} if field else str(error))


class IntervalSchedule(models.Model):
    class Period(models.TextChoices):
        DAYS = "days"
        HOURS = "hours"
        MINUTES = "minutes"
        SECONDS = "seconds"

    every = models.PositiveIntegerField(help_text="how many periods between runs")
    period = models.CharField(max_length=24, choices=Period.choices)

    class Meta:
        app_label = "django_tasks_q"
        ordering = ["period", "every"]
        constraints = [
            models.UniqueConstraint(fields=["every", "period"], name="tasks_q_interval_unique"),
            models.CheckConstraint(condition=Q(every__gte=1), name="tasks_q_interval_every_positive"),
        ]

    def as_schedule(self):
        from ..beat.schedules import Interval

        return Interval(every=self.every, period=self.period)

    def clean(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValidationError({"every": "must be at least 1"})

    def __str__(self) -> str:
        return self.as_schedule().describe()


class CrontabSchedule(models.Model):
    """Cron fields, read as wall-clock time in ``timezone`` (see docs: DST policy)."""

    minute = models.CharField(max_length=240, default="*")
    hour = models.CharField(max_length=96, default="*")
    day_of_week = models.CharField(max_length=64, default="*", help_text="0-6, 0 is Sunday; or mon-fri")
    day_of_month = models.CharField(max_length=124, default="*")
    month_of_year = models.CharField(max_length=64, default="*")
    timezone = models.CharField(max_length=63, default="UTC", help_text="IANA name such as Asia/Shanghai")

    class Meta:
        app_label = "django_tasks_q"
        ordering = ["month_of_year", "day_of_month", "day_of_week", "hour", "minute", "timezone"]

    def as_schedule(self):
        from ..beat.schedules import crontab_of

        return crontab_of(self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year,
                          self.timezone)

    def clean(self) -> None:
        from ..beat.schedules import InvalidSchedule

        try:
            self.as_schedule()
        except InvalidSchedule as error:
            raise _invalid(error) from error

    def __str__(self) -> str:
        try:
            return self.as_schedule().describe()
        except ValueError:
            return f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} {self.day_of_week} (invalid)"


class ClockedSchedule(models.Model):
    clocked_time = models.DateTimeField(help_text="run once at this time")

    class Meta:
        app_label = "django_tasks_q"
        ordering = ["clocked_time"]

    def as_schedule(self):
        from ..beat.schedules import Clocked

        return Clocked(at=self.clocked_time)

    def __str__(self) -> str:
        return self.as_schedule().describe()


class SolarSchedule(models.Model):
    class Event(models.TextChoices):
        SUNRISE = "sunrise"
        SUNSET = "sunset"
        SOLAR_NOON = "solar_noon"
        DAWN_CIVIL = "dawn_civil"
        DUSK_CIVIL = "dusk_civil"
        DAWN_NAUTICAL = "dawn_nautical"
        DUSK_NAUTICAL = "dusk_nautical"
        DAWN_ASTRONOMICAL = "dawn_astronomical"
        DUSK_ASTRONOMICAL = "dusk_astronomical"

    event = models.CharField(max_length=24, choices=Event.choices)
    latitude = models.DecimalField(max_digits=9, decimal_places=6)
    longitude = models.DecimalField(max_digits=9, decimal_places=6)

    class Meta:
        app_label = "django_tasks_q"
        ordering = ["event", "latitude", "longitude"]
        constraints = [
            models.UniqueConstraint(fields=["event", "latitude", "longitude"], name="tasks_q_solar_unique"),
            models.CheckConstraint(condition=Q(latitude__gte=-90, latitude__lte=90), name="tasks_q_solar_latitude"),
            models.CheckConstraint(condition=Q(longitude__gte=-180, longitude__lte=180),
                                   name="tasks_q_solar_longitude"),
        ]

    def as_schedule(self):
        from ..beat.schedules import Solar

        return Solar(event=self.event, latitude=float(self.latitude), longitude=float(self.longitude))

    def clean(self) -> None:
        from ..beat.schedules import InvalidSchedule

        if self.latitude is None or self.longitude is None:
            return
        try:
            self.as_schedule()
        except InvalidSchedule as error:
            raise _invalid(error) from error

    def __str__(self) -> str:
        return self.as_schedule().describe()


SCHEDULE_FIELDS = ("interval", "crontab", "clocked", "solar")
#: the columns of PeriodicTask only the scheduler (and the triggers of migration 0002) write
PLAN_COLUMNS = ("next_run_at", "plan_version")
#: any of the four schedule rows (for type hints: each has ``as_schedule()``)
ScheduleRow: TypeAlias = Union[IntervalSchedule, CrontabSchedule, ClockedSchedule, SolarSchedule]


def _exactly_one_schedule() -> Q:
    condition = Q()
    for chosen in SCHEDULE_FIELDS:
        condition |= Q(**{f"{name}__isnull": name != chosen for name in SCHEDULE_FIELDS})
    return condition


class PeriodicTask(models.Model):
    """A task sent by ``taskbeat`` on a schedule."""

    class CatchUp(models.TextChoices):
        ONCE = "once", "run once after downtime"
        NONE = "none", "skip missed runs"

    class Source(models.TextChoices):
        ADMIN = "admin"
        SETTINGS = "settings", "TASKS_Q['BEAT_SCHEDULE']"

    name = models.CharField(max_length=200, unique=True)
    task = models.CharField(max_length=200, help_text="registered task name, e.g. videos.tasks.compress")
    interval = models.ForeignKey(IntervalSchedule, null=True, blank=True, on_delete=models.CASCADE)
    crontab = models.ForeignKey(CrontabSchedule, null=True, blank=True, on_delete=models.CASCADE)
    clocked = models.ForeignKey(ClockedSchedule, null=True, blank=True, on_delete=models.CASCADE)
    solar = models.ForeignKey(SolarSchedule, null=True, blank=True, on_delete=models.CASCADE)
    args = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder, help_text='JSON list, e.g. [1, 2]')
    kwargs = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder,
                              help_text='JSON object, e.g. {"day": "monday"}')
    queue = models.CharField(max_length=200, blank=True, help_text="empty: the task's own routing")
    routing_key = models.CharField(max_length=200, blank=True)
    priority = models.PositiveSmallIntegerField(null=True, blank=True)
    expire_seconds = models.PositiveIntegerField(null=True, blank=True,
                                                 help_text="each run expires this many seconds after it is sent")
    expires = models.DateTimeField(null=True, blank=True, help_text="no runs are sent after this time")
    one_off = models.BooleanField(default=False, help_text="disable after the first run")
    start_time = models.DateTimeField(null=True, blank=True, help_text="no runs before this time")
    enabled = models.BooleanField(default=True)
    catch_up = models.CharField(max_length=8, choices=CatchUp.choices, default=CatchUp.ONCE)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.ADMIN, editable=False)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    total_run_count = models.PositiveIntegerField(default=0, editable=False)
    description = models.TextField(blank=True)
    date_changed = models.DateTimeField(auto_now=True)
    #: written by the scheduler only: what the schedule looked like when it last
    #: (re)based the task, so an edit made by any means -- form, update(), raw SQL --
    #: restarts the count from the edit instead of firing at once
    schedule_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    baseline_at = models.DateTimeField(null=True, blank=True, editable=False)
    #: written by the scheduler only: when it looks at the task next (its due-time index). Empty: not planned
    #: yet -- a new row, or one whose schedule, timing, enabled flag or last run was changed, which database
    #: triggers (migration 0002) note by emptying it, whatever made the change. The triggers also count the
    #: changes in ``plan_version``: the scheduler stores a plan only where the count is still the one it read.
    #: A later migration that rebuilds these tables on SQLite must drop the triggers first and create them again
    #: after (``drop_triggers`` / ``create_triggers`` in migration 0002).
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    plan_version = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        app_label = "django_tasks_q"
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="tasks_q_periodic_due")]
        constraints = [
            models.CheckConstraint(condition=_exactly_one_schedule(), name="tasks_q_periodic_one_schedule"),
            models.CheckConstraint(condition=Q(priority__isnull=True) | Q(priority__lte=255),
                                   name="tasks_q_periodic_priority"),
        ]

    def __str__(self) -> str:
        return f"{self.name}: {self.schedule_row}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, never writing back the scheduler's plan (``next_run_at``, ``plan_version``) when updating a row:
        an instance read before the scheduler planned the task again would put an old plan back, and
        the triggers would not see a change."""
        if self.pk is not None and not self._state.adding and kwargs.get("update_fields") is None \
                and not kwargs.get("force_insert"):
            kwargs["update_fields"] = [field.name for field in self._meta.concrete_fields
                                       if not field.primary_key and field.name not in PLAN_COLUMNS]
        super().save(*args, **kwargs)

    @property
    def schedule_row(self) -> ScheduleRow | None:
        for name in SCHEDULE_FIELDS:
            row = getattr(self, name)
            if row is not None:
                return row
        return None

    def clean(self) -> None:
        chosen = [name for name in SCHEDULE_FIELDS if getattr(self, f"{name}_id") is not None]
        if len(chosen) != 1:
            message = "choose exactly one schedule" + (f" (got {', '.join(chosen)})" if chosen else "")
            raise ValidationError({name: message for name in (chosen or ["interval"])})
        if not isinstance(self.args, list):
            raise ValidationError({"args": f"must be a JSON list, got {type(self.args).__name__}"})
        if not isinstance(self.kwargs, dict):
            raise ValidationError({"kwargs": f"must be a JSON object, got {type(self.kwargs).__name__}"})
        if self.priority is not None and self.priority > 255:
            raise ValidationError({"priority": "must be from 0 to 255"})
