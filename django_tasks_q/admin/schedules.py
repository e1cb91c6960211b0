"""Admin for periodic tasks and their four schedule kinds.

``PeriodicTask`` is edited with its schedule inline (see ``schedule_forms``);
the list reads each schedule in words with its next run time, and the
actions enable, disable, or send a task at once without touching its
schedule: "run now" goes through the normal calling path, and
``last_run_at`` / ``total_run_count`` stay the scheduler's. The schedule
pages show what a schedule means: a description, and the next runs.
``BeatLease`` is internal and not registered.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar
from zoneinfo import ZoneInfo

from django.contrib import admin, messages
from django.contrib.admin.utils import display_for_value
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from ..beat import entries
from ..beat.schedules import InvalidSchedule
from ..core.calling import send
from ..core.registry import registry
from ..exceptions import BrokerUnavailable, EncodeError, ImproperlyConfigured
from ..models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from ..models.schedules import SCHEDULE_FIELDS, ScheduleRow
from .schedule_forms import PeriodicTaskForm, kind_fieldsets

NEXT_RUNS = 5


def _describe(row: ScheduleRow | None) -> str:
    if row is None:
        return "-"
    try:
        return row.as_schedule().describe()
    except InvalidSchedule as error:  # a row written around clean(), e.g. by raw SQL
        return f"invalid schedule ({error})"


def _moment(moment: datetime, zone: str = "UTC") -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime("%a %Y-%m-%d %H:%M:%S %Z")


class ScheduleKindFilter(admin.SimpleListFilter):
    """Periodic tasks by the kind of their schedule (one foreign key of four is set)."""

    title = "schedule kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [(kind, kind) for kind in SCHEDULE_FIELDS]

    def queryset(self, request, queryset):
        kind = self.value()
        return queryset.filter(**{f"{kind}__isnull": False}) if kind in SCHEDULE_FIELDS else queryset


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(admin.ModelAdmin):
    form = PeriodicTaskForm
    list_display = ("name", "task", "schedule_display", "next_run_display", "last_run_at", "total_run_count",
                    "enabled", "source")
    list_filter = ("enabled", ScheduleKindFilter, "source", "queue")
    search_fields = ("name", "task")
    list_select_related = ("interval", "crontab", "clocked", "solar")
    actions = ("enable", "disable", "run_now")
    readonly_fields = ("source", "next_run_display", "last_run_at", "total_run_count", "date_changed")
    fieldsets = (
        (None, {"fields": ("name", "task", "enabled", "description")}),
        *kind_fieldsets(),
        ("Arguments", {"fields": ("args", "kwargs")}),
        ("Routing", {"fields": ("queue", "routing_key", "priority", "expire_seconds")}),
        ("Timing", {"fields": ("start_time", "expires", "one_off", "catch_up")}),
        ("Runs", {"fields": ("source", "next_run_display", "last_run_at", "total_run_count", "date_changed")}),
    )

    @admin.display(description="schedule")
    def schedule_display(self, obj: PeriodicTask) -> str:
        return _describe(obj.schedule_row)

    @admin.display(description="next run")
    def next_run_display(self, obj: PeriodicTask) -> str:
        if obj.pk is None:
            return "-"
        now = timezone.now()
        try:
            due = entries.next_run_at(obj, now)
        except InvalidSchedule:
            return "invalid schedule"
        if due is None:
            return "-"
        return display_for_value(due, "-") + (" (due now)" if due <= now else "")

    def save_model(self, request, obj: PeriodicTask, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.task not in registry:
            self.message_user(request, f"{obj.task!r} is not registered in this web process; it is sent by "
                                       "name, which is fine if the workers import it.", messages.WARNING)

    @admin.action(description="Enable selected periodic tasks", permissions=["change"])
    def enable(self, request, queryset) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"enabled {count} periodic task(s)", messages.SUCCESS)

    @admin.action(description="Disable selected periodic tasks", permissions=["change"])
    def disable(self, request, queryset) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"disabled {count} periodic task(s)", messages.SUCCESS)

    @admin.action(description="Run selected tasks now (their schedules are not changed)", permissions=["change"])
    def run_now(self, request, queryset) -> None:
        """Send each task once through the normal calling path; its run count and last run stay as they are."""
        sent = []
        tasks = list(queryset)
        for index, task in enumerate(tasks):
            try:
                result = send(task.task, task.args, task.kwargs, entries.send_options(task))
            except BrokerUnavailable as error:
                unsent = ", ".join(t.name for t in tasks[index:])
                self.message_user(request, f"could not send {unsent}: {error}", messages.ERROR)
                break  # the next ones would wait for the same broker
            except (EncodeError, ImproperlyConfigured) as error:  # InvalidTaskOptions is an ImproperlyConfigured
                self.message_user(request, f"could not send {task.name} ({task.task}): {error}", messages.ERROR)
            else:
                sent.append(f"{task.name} [{result.id}]")
        if sent:
            self.message_user(request, f"sent {len(sent)} task(s): {', '.join(sent)}", messages.SUCCESS)


class ScheduleAdmin(admin.ModelAdmin):
    """What every schedule page shows: the schedule in words and how many tasks use it."""

    readonly_fields: ClassVar[tuple[str, ...]] = ("description_display", "tasks_display")

    @admin.display(description="description")
    def description_display(self, obj: ScheduleRow | None) -> str:
        return _describe(obj) if obj is not None and obj.pk is not None else "-"

    @admin.display(description="used by")
    def tasks_display(self, obj: ScheduleRow | None) -> str:
        if obj is None or obj.pk is None:
            return "-"
        names = list(obj.periodictask_set.order_by("name").values_list("name", flat=True)[:20])
        return ", ".join(names) or "no periodic task"


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(ScheduleAdmin):
    list_display = ("description_display", "every", "period")
    fields = ("every", "period", "description_display", "tasks_display")


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(ScheduleAdmin):
    list_display = ("description_display", "minute", "hour", "day_of_week", "day_of_month", "month_of_year",
                    "timezone")
    list_filter = ("timezone",)
    readonly_fields = (*ScheduleAdmin.readonly_fields, "next_runs_display")
    fieldsets = (
        (None, {"fields": ("minute", "hour", "day_of_week", "day_of_month", "month_of_year", "timezone")}),
        ("Meaning", {"fields": ("description_display", "next_runs_display", "tasks_display")}),
    )

    @admin.display(description=f"next {NEXT_RUNS} runs")
    def next_runs_display(self, obj: CrontabSchedule | None) -> str:
        if obj is None or obj.pk is None:
            return "-"
        try:
            runs = obj.as_schedule().next_runs(timezone.now(), NEXT_RUNS)
        except InvalidSchedule as error:
            return f"invalid schedule ({error})"
        rows = ((_moment(run, obj.timezone), _moment(run)) for run in runs)
        return format_html("<ol style='margin:0'>{}</ol>",
                           format_html_join("", "<li>{} &nbsp;=&nbsp; {}</li>", rows))


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(ScheduleAdmin):
    list_display = ("description_display", "clocked_time")
    fields = ("clocked_time", "description_display", "tasks_display")


@admin.register(SolarSchedule)
class SolarScheduleAdmin(ScheduleAdmin):
    list_display = ("description_display", "event", "latitude", "longitude")
    list_filter = ("event",)
    readonly_fields = (*ScheduleAdmin.readonly_fields, "next_run_display")
    fields = ("event", "latitude", "longitude", "description_display", "next_run_display", "tasks_display")

    @admin.display(description="next run")
    def next_run_display(self, obj: SolarSchedule | None) -> str:
        if obj is None or obj.pk is None:
            return "-"
        try:
            run = obj.as_schedule().next_after(timezone.now())
        except InvalidSchedule as error:
            return f"invalid schedule ({error})"
        return _moment(run) if run is not None else "not within a year (polar day or night)"
