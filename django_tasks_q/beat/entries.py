"""When a ``PeriodicTask`` runs next, and claiming one run of it.

The rules, in one place:

- A task counts from its *reference*: the later of ``last_run_at`` and
  ``baseline_at``. The scheduler sets ``baseline_at`` to "now" when it first
  sees a task and whenever the task's schedule changes (by any means: the
  admin, ``QuerySet.update()``, raw SQL -- it compares fingerprints), so a
  new or edited schedule never fires at once.
- ``start_time`` holds runs back; ``expires`` ends them.
- After downtime the missed runs collapse into one (``catch_up="once"``) or
  are skipped (``catch_up="none"``, beyond ``GRACE``).
- Claiming a run is one compare-and-set UPDATE on ``last_run_at``: of two
  beats that both see the same slot due, exactly one wins it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F

from ..models import PeriodicTask

#: how late a run may start before ``catch_up="none"`` calls it missed
GRACE = timedelta(seconds=10)
SCHEDULE_COLUMNS = {
    "interval": ("every", "period"),
    "crontab": ("minute", "hour", "day_of_week", "day_of_month", "month_of_year", "timezone"),
    "clocked": ("clocked_time",),
    "solar": ("event", "latitude", "longitude"),
}


def fingerprint(task: PeriodicTask) -> str:
    """A digest of what decides the task's times: schedule kind, its fields, start_time."""
    row = task.schedule_row
    kind = next((k for k in SCHEDULE_COLUMNS if getattr(task, f"{k}_id") is not None), "")
    values = [kind, task.start_time.isoformat() if task.start_time else None]
    if row is not None:
        values += [str(getattr(row, column)) for column in SCHEDULE_COLUMNS[kind]]
    return hashlib.sha1(json.dumps(values).encode()).hexdigest()


def reference(task: PeriodicTask) -> datetime | None:
    if task.clocked_id:  # an explicit one-off time is the intent: it runs (once) even if first seen late
        assert task.clocked is not None  # a set clocked_id loads its row (or raises DoesNotExist)
        return task.last_run_at or datetime.min.replace(tzinfo=task.clocked.clocked_time.tzinfo)
    moments = [m for m in (task.last_run_at, task.baseline_at) if m is not None]
    return max(moments) if moments else None


def next_run_at(task: PeriodicTask, now: datetime) -> datetime | None:
    """The next time the task is due (possibly in the past: it is overdue); None: never again."""
    if not task.enabled or task.schedule_row is None or (task.expires is not None and now > task.expires):
        return None
    schedule = task.schedule_row.as_schedule()
    since = reference(task) or now
    if task.start_time is not None and task.start_time > since:
        due = task.start_time if task.interval_id else schedule.next_after(task.start_time - timedelta(microseconds=1))
    else:
        due = schedule.next_after(since)
    if due is None or (task.expires is not None and due > task.expires):
        return None
    return due


@dataclass(frozen=True)
class Decision:
    send: bool  # False: the run is skipped (missed with catch_up="none")
    slot: datetime  # the new last_run_at


def decide(task: PeriodicTask, due: datetime, now: datetime) -> Decision:
    """What to do with a task whose ``due`` time has come."""
    row = task.schedule_row
    assert row is not None  # next_run_at() gave a due time, so the task has a schedule
    slot = row.as_schedule().last_at_or_before(now) or due
    missed = now - due > GRACE
    return Decision(send=not (missed and task.catch_up == PeriodicTask.CatchUp.NONE), slot=max(slot, due))


def claim(task: PeriodicTask, slot: datetime, counted: bool) -> bool:
    """Move ``last_run_at`` from what we read to ``slot``; False if another beat got there first."""
    rows = PeriodicTask.objects.filter(pk=task.pk, enabled=True)
    rows = rows.filter(last_run_at__isnull=True) if task.last_run_at is None else rows.filter(
        last_run_at=task.last_run_at)
    changes: dict[str, Any] = {"last_run_at": slot}
    if counted:
        changes["total_run_count"] = F("total_run_count") + 1
    if task.one_off or task.clocked_id:  # its one run is used, sent or skipped
        changes["enabled"] = False
    return rows.update(**changes) == 1


def unclaim(task: PeriodicTask, slot: datetime) -> None:
    """Give a claimed run back (its message could not be sent) so the next tick retries it."""
    PeriodicTask.objects.filter(pk=task.pk, last_run_at=slot).update(
        last_run_at=task.last_run_at, total_run_count=F("total_run_count") - 1, enabled=True)


def send_options(task: PeriodicTask) -> dict[str, Any]:
    """Call options for one run: the row's routing, and its per-run expiry."""
    options: dict[str, Any] = {"headers": {"periodic_task_name": task.name}}
    if task.queue:
        options["queue"] = task.queue
    if task.routing_key:
        options["routing_key"] = task.routing_key
    if task.priority is not None:
        options["priority"] = task.priority
    if task.expire_seconds:
        options["expires"] = task.expire_seconds
    return options
