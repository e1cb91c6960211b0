"""``TASKS_Q["BEAT_SCHEDULE"]`` -> ``PeriodicTask`` rows, at beat start.

The seed's shape::

    BEAT_SCHEDULE = {
        "add-every-30s": {"task": "videos.tasks.add", "schedule": 30.0, "args": (16, 16)},
        "monday-report": {"task": "reports.build", "schedule": crontab(hour=7, minute=30, day_of_week=1),
                          "kwargs": {"day": "monday"}, "options": {"queue": "reports"}},
    }

``schedule`` is seconds, a ``timedelta`` or ``crontab(...)`` (from
``django_tasks_q.beat.crontab``, importable in a settings file). Rows made from
settings are marked ``source="settings"``; a settings row whose entry was
removed is disabled (with a note), never deleted, so its history stays.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction

from ..conf import settings
from ..exceptions import ImproperlyConfigured
from ..models import CrontabSchedule, IntervalSchedule, PeriodicTask
from .crontab import CrontabEntry, crontab  # noqa: F401  crontab re-exported for convenience
from .schedules import Crontab, InvalidSchedule

logger = logging.getLogger(__name__)
ENTRY_KEYS = {"task", "schedule", "args", "kwargs", "options", "description", "catch_up"}
OPTION_KEYS = {"queue", "routing_key", "priority", "expires", "one_off", "start_time"}


def _find_or_create(model: Any, **fields: Any) -> Any:
    """The first row with exactly these fields (staff may have made duplicates), or a new one."""
    return model.objects.filter(**fields).order_by("pk").first() or model.objects.create(**fields)


def _seconds(name: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 1:
        raise ImproperlyConfigured(f"BEAT_SCHEDULE[{name!r}]['options'][{key!r}]: seconds >= 1, got {value!r}")
    return int(seconds)


def _schedule_fields(name: str, schedule: Any) -> dict[str, Any]:
    if isinstance(schedule, (int, float, timedelta)) and not isinstance(schedule, bool):
        seconds = schedule.total_seconds() if isinstance(schedule, timedelta) else float(schedule)
        if seconds < 1 or seconds != int(seconds):
            raise ImproperlyConfigured(f"BEAT_SCHEDULE[{name!r}]['schedule']: whole seconds >= 1, got {schedule!r}")
        interval = _find_or_create(IntervalSchedule, every=int(seconds), period="seconds")
        return {"interval": interval, "crontab": None, "clocked": None, "solar": None}
    if isinstance(schedule, (Crontab, CrontabEntry)):
        try:
            schedule = Crontab(minute=schedule.minute, hour=schedule.hour, day_of_week=schedule.day_of_week,
                               day_of_month=schedule.day_of_month, month_of_year=schedule.month_of_year,
                               timezone=schedule.timezone or settings.TIMEZONE)
        except InvalidSchedule as error:
            raise ImproperlyConfigured(f"BEAT_SCHEDULE[{name!r}]['schedule']: {error}") from error
        row = _find_or_create(
            CrontabSchedule, minute=schedule.minute, hour=schedule.hour, day_of_week=schedule.day_of_week,
            day_of_month=schedule.day_of_month, month_of_year=schedule.month_of_year, timezone=schedule.timezone)
        return {"interval": None, "crontab": row, "clocked": None, "solar": None}
    raise ImproperlyConfigured(
        f"BEAT_SCHEDULE[{name!r}]['schedule'] must be seconds, a timedelta or crontab(...), got {schedule!r}")


def _row_fields(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(entry, dict) or "task" not in entry or "schedule" not in entry:
        raise ImproperlyConfigured(f"BEAT_SCHEDULE[{name!r}] must be a dict with 'task' and 'schedule'")
    unknown = set(entry) - ENTRY_KEYS
    options = dict(entry.get("options") or {})
    unknown |= {f"options.{k}" for k in set(options) - OPTION_KEYS}
    if unknown:
        raise ImproperlyConfigured(f"BEAT_SCHEDULE[{name!r}]: unknown keys {sorted(unknown)}")
    priority = options.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 0 <= priority <= 255):
        raise ImproperlyConfigured(f"BEAT_SCHEDULE[{name!r}]['options']['priority']: 0-255, got {priority!r}")
    catch_up = entry.get("catch_up", PeriodicTask.CatchUp.ONCE)
    if catch_up not in PeriodicTask.CatchUp.values:
        raise ImproperlyConfigured(f"BEAT_SCHEDULE[{name!r}]['catch_up']: one of {PeriodicTask.CatchUp.values}, "
                                   f"got {catch_up!r}")
    return {
        "task": entry["task"], **_schedule_fields(name, entry["schedule"]),
        "args": list(entry.get("args") or ()), "kwargs": dict(entry.get("kwargs") or {}),
        "queue": options.get("queue") or "", "routing_key": options.get("routing_key") or "",
        "priority": priority, "expire_seconds": _seconds(name, "expires", options.get("expires")),
        "one_off": bool(options.get("one_off", False)), "start_time": options.get("start_time"),
        "description": entry.get("description", ""), "catch_up": catch_up,
        "source": PeriodicTask.Source.SETTINGS, "enabled": True,
    }


@transaction.atomic
def sync_settings_schedule() -> None:
    """Create or update a row per entry; disable settings rows that left the settings."""
    wanted = settings.BEAT_SCHEDULE or {}
    for name, entry in wanted.items():
        PeriodicTask.objects.update_or_create(name=name, defaults=_row_fields(name, entry))
    gone = PeriodicTask.objects.filter(source=PeriodicTask.Source.SETTINGS, enabled=True).exclude(name__in=wanted)
    for task in gone:
        logger.warning("periodic task %r is no longer in BEAT_SCHEDULE; disabled (not deleted)", task.name)
        task.enabled = False
        task.description = (task.description + "\n" if task.description else "") + "Removed from BEAT_SCHEDULE."
        task.save(update_fields=["enabled", "description", "date_changed"])
    if wanted:
        logger.info("synced %d periodic task(s) from BEAT_SCHEDULE", len(wanted))
