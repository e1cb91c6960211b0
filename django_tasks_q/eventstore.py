"""Workers' events into the database, bounded: raw rows, per-minute roll-ups, worker rows.

``manage.py taskevents`` hands every Celery-format event it receives (ours
or a Celery worker's: see :mod:`django_tasks_q.worker.events`) to an
:class:`EventRecorder`, which writes them in batches, one transaction per
batch:

* **raw rows** -- :class:`~django_tasks_q.models.TaskEvent`, one
  ``bulk_create`` per batch. Task events, and ``worker-online`` /
  ``worker-offline``; heartbeats only update worker rows (one every few
  seconds per worker would crowd out the task events).
* **roll-ups** -- :class:`~django_tasks_q.models.TaskActivity`, one row per
  (minute, task name), incremented with ``F()`` expressions: one UPDATE per
  minute and task name touched by the batch (an INSERT the first time), so
  two recorders never lose each other's counts.
* **worker rows** -- a Celery worker's ``worker-online`` / ``-heartbeat`` /
  ``-offline`` upserts its :class:`~django_tasks_q.models.Worker` row, so it
  is listed in the admin beside ours. Our own workers write their rows
  themselves, with more in them (queues, pool, watchdog findings): their
  worker events are stored as raw rows but never touch ``Worker``.

Task events after ``task-received`` carry only the task id; the name is
taken from an in-memory map of recent ids (:class:`TaskNames`), else from
earlier rows (``TaskEvent``, then ``TaskResult``), one query each per batch.

:func:`prune` keeps the tables bounded: raw rows older than
``EVENTS_KEEP_SECONDS`` or beyond the newest ``EVENTS_KEEP_ROWS``, roll-ups
older than ``ACTIVITY_KEEP_DAYS``. :func:`activity_series` is what the
dashboard's charts read.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.db import IntegrityError, InterfaceError, OperationalError, connections, transaction
from django.db.models import F, FloatField, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from .broker.connection import mask_url
from .conf import settings

logger = logging.getLogger(__name__)

#: the task state each task event implies (Celery's ``celery.events.state``)
STATES = {"task-sent": "PENDING", "task-received": "RECEIVED", "task-started": "STARTED",
          "task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-retried": "RETRY",
          "task-revoked": "REVOKED", "task-rejected": "REJECTED"}
#: the ``TaskActivity`` counter each task event increments
COUNTERS = {"task-received": "received", "task-started": "started", "task-succeeded": "succeeded",
            "task-failed": "failed", "task-retried": "retried", "task-rejected": "rejected", "task-revoked": "revoked"}
WORKER_EVENTS = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})
#: our workers' ``sw_ident``: they write their own ``Worker`` rows
OWN_SOFTWARE = "django-tasks-q"
#: task ids whose names are remembered between batches
NAMES_KEPT = 20_000
#: events held while the database is unreachable; older ones are dropped beyond this
MAX_PENDING = 50_000
#: characters kept of an exception or traceback
TEXT_LIMIT = 20_000


class BadEvent(ValueError):
    """An event that is not a Celery event dict; it is logged and skipped."""


@dataclass
class Parsed:
    """The columns of one event, read once."""

    event: dict[str, Any]
    type: str
    at: datetime
    task_id: str
    task_name: str
    hostname: str

    @property
    def minute(self) -> datetime:
        return self.at.replace(second=0, microsecond=0)


def parse(event: Any, now: float | None = None) -> Parsed:
    """Check ``event`` and read its columns, or raise :class:`BadEvent` saying what is wrong."""
    if not isinstance(event, dict):
        raise BadEvent(f"an event must be a dict, got {type(event).__name__}")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise BadEvent(f"event without a type: {sorted(event)[:10]}")
    stamp = event.get("timestamp", now if now is not None else time.time())
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        raise BadEvent(f"{kind} event with timestamp {stamp!r}, not a number of seconds")
    try:
        at = datetime.fromtimestamp(stamp, tz=dt_timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise BadEvent(f"{kind} event with timestamp {stamp!r} out of range") from exc
    return Parsed(event, kind, at, _text(event.get("uuid"), 255), _text(event.get("name"), 255),
                  _text(event.get("hostname"), 255))


def _text(value: Any, limit: int) -> str:
    return "" if value is None else str(value)[:limit].replace("\x00", "")  # PostgreSQL refuses NUL in text


class TaskNames:
    """Task id -> task name for recent tasks, least recently used forgotten first."""

    def __init__(self, size: int = NAMES_KEPT):
        self.size = size
        self._names: OrderedDict[str, str] = OrderedDict()

    def remember(self, task_id: str, name: str) -> None:
        if task_id and name:
            self._names[task_id] = name
            self._names.move_to_end(task_id)
            while len(self._names) > self.size:
                self._names.popitem(last=False)

    def get(self, task_id: str) -> str:
        return self._names.get(task_id, "")

    def learn(self, event: dict[str, Any]) -> str:
        """Remember the name an event carries, or recall it; ``""`` when unknown."""
        task_id, name = str(event.get("uuid") or ""), str(event.get("name") or "")
        if name:
            self.remember(task_id, name)
            return name
        return self.get(task_id)


@dataclass
class _Bucket:
    counts: dict[str, int] = field(default_factory=dict)
    runtime_total: float = 0.0
    runtime_max: float = 0.0


class EventRecorder:
    """Buffers events (:meth:`add`) and writes them in one transaction per :meth:`flush`.

    ``store_raw=False`` keeps only roll-ups and worker rows. ``clock``
    (seconds since the epoch) stamps events that carry no timestamp and
    decides what :meth:`prune` removes; tests pass their own.
    """

    def __init__(self, *, store_raw: bool = True, names: TaskNames | None = None,
                 clock: Callable[[], float] = time.time, broker: str | None = None, using: str = "default"):
        self.store_raw = store_raw
        self.names = names or TaskNames()
        self.clock = clock
        self.broker = mask_url(broker if broker is not None else settings.BROKER_URL)[:255]
        self.using = using
        self.pending: list[Parsed] = []
        self.dropped = 0
        self._failing = False

    # -- taking events ----------------------------------------------------
    def add(self, event: Any) -> Parsed | None:
        """Queue one event for the next flush; ``None`` (and a log line) when it is not an event."""
        try:
            parsed = parse(event, self.clock())
        except BadEvent as exc:
            logger.warning("ignored a malformed event: %s", exc)
            return None
        if parsed.task_id:
            parsed.task_name = self.names.learn(parsed.event)[:255]
        self.pending.append(parsed)
        if len(self.pending) > MAX_PENDING:  # the database has been away for long: keep the newest
            excess = len(self.pending) - MAX_PENDING
            del self.pending[:excess]
            self.dropped += excess
        return parsed

    def flush(self) -> int:
        """Write what is pending; the number of events written. Never raises.

        When the database is unreachable the events stay pending (up to
        ``MAX_PENDING``) and the next flush tries again; the error is logged
        once per outage. A batch refused for its content is logged and dropped.
        """
        if not self.pending:
            return 0
        batch = self.pending
        try:
            self._resolve_names(batch)
            with transaction.atomic(using=self.using):
                if self.store_raw and keeps_raw_rows():
                    self._insert_raw(batch)
                self._roll_up(batch)
                self._update_workers(batch)
        except (InterfaceError, OperationalError) as exc:  # the database is away: keep them, try again
            if not self._failing:
                logger.error("could not record %d event(s) (%s: %s); will retry", len(batch), type(exc).__name__, exc)
            self._failing = True
            connections[self.using].close_if_unusable_or_obsolete()
            return 0
        except Exception:  # something in the batch the database refuses: retrying cannot help
            logger.exception("could not record %d event(s); they are dropped", len(batch))
            self.dropped += len(batch)
            self.pending = []
            return 0
        if self._failing:
            logger.info("events are recorded again")
        self._failing = False
        self.pending = []
        return len(batch)

    # -- the three writes -------------------------------------------------
    def _resolve_names(self, batch: list[Parsed]) -> None:
        """Fill in names the in-memory map did not know from earlier rows: one query per table."""
        from .models import TaskEvent, TaskResult

        missing = {p.task_id for p in batch if p.task_id and not p.task_name}
        for model in (TaskEvent, TaskResult):
            if not missing:
                break
            found = dict(model.objects.using(self.using).filter(task_id__in=missing).exclude(task_name="")
                         .values_list("task_id", "task_name"))
            for task_id, name in found.items():
                self.names.remember(task_id, name)
            missing -= set(found)
        for parsed in batch:
            if parsed.task_id and not parsed.task_name:
                parsed.task_name = self.names.get(parsed.task_id)

    def _insert_raw(self, batch: list[Parsed]) -> None:
        from .models import TaskEvent

        rows = []
        for p in batch:
            if p.type == "worker-heartbeat":
                continue
            event = p.event
            runtime = event.get("runtime") if p.type == "task-succeeded" else None
            rows.append(TaskEvent(
                event=p.type[:40], task_id=p.task_id, task_name=p.task_name, hostname=p.hostname, timestamp=p.at,
                state=STATES.get(p.type, ""), runtime=_number(runtime),
                exception=_text(event.get("exception"), TEXT_LIMIT),
                traceback=_text(event.get("traceback"), TEXT_LIMIT),
                data=event))
        TaskEvent.objects.using(self.using).bulk_create(rows, batch_size=500)

    def _roll_up(self, batch: list[Parsed]) -> None:
        buckets: dict[tuple[datetime, str], _Bucket] = {}
        for p in batch:
            counter = COUNTERS.get(p.type)
            if counter is None:
                continue
            bucket = buckets.setdefault((p.minute, p.task_name), _Bucket())
            bucket.counts[counter] = bucket.counts.get(counter, 0) + 1
            runtime = _number(p.event.get("runtime")) if p.type == "task-succeeded" else None
            if runtime is not None and runtime >= 0:
                bucket.runtime_total += runtime
                bucket.runtime_max = max(bucket.runtime_max, runtime)
        for (minute, name), bucket in buckets.items():
            self._add_to_bucket(minute, name, bucket)

    def _add_to_bucket(self, minute: datetime, name: str, bucket: _Bucket) -> None:
        from .models import TaskActivity

        rows = TaskActivity.objects.using(self.using).filter(minute=minute, task_name=name)
        increments: dict[str, Any] = {key: F(key) + count for key, count in bucket.counts.items()}
        if bucket.runtime_total or bucket.runtime_max:
            increments["runtime_total"] = F("runtime_total") + bucket.runtime_total
            increments["runtime_max"] = Greatest("runtime_max", Value(bucket.runtime_max, output_field=FloatField()))
        if rows.update(**increments):
            return
        try:
            with transaction.atomic(using=self.using):  # a savepoint: a concurrent insert wins, we add to it
                TaskActivity.objects.using(self.using).create(
                    minute=minute, task_name=name, runtime_total=bucket.runtime_total,
                    runtime_max=bucket.runtime_max, **bucket.counts)
        except IntegrityError:
            rows.update(**increments)

    def _update_workers(self, batch: list[Parsed]) -> None:
        """Upsert the ``Worker`` row of each Celery worker heard from in this batch."""
        from .models import Worker

        latest: dict[str, dict[str, Any]] = {}
        for p in sorted((p for p in batch if p.type in WORKER_EVENTS and p.hostname), key=lambda p: p.at):
            if p.event.get("sw_ident") == OWN_SOFTWARE:
                continue  # our worker writes its own row
            values = latest.setdefault(p.hostname, {})
            values.update(_worker_values(p))
            values["broker"] = self.broker
        for hostname, values in latest.items():
            rows = Worker.objects.using(self.using).filter(hostname=hostname)
            if not rows.update(**values):
                try:
                    with transaction.atomic(using=self.using):
                        Worker.objects.using(self.using).create(hostname=hostname, **values)
                except IntegrityError:
                    rows.update(**values)


def _worker_values(p: Parsed) -> dict[str, Any]:
    event = p.event
    values: dict[str, Any] = {"last_heartbeat": p.at}
    if isinstance(event.get("pid"), int) and event["pid"] >= 0:
        values["pid"] = event["pid"]
    software = " ".join(str(event[key]) for key in ("sw_ident", "sw_ver") if event.get(key))
    if software:
        values["version"] = software[:40]
    freq = _number(event.get("freq"))
    if freq and freq > 0:
        values["heartbeat_interval"] = freq
    for key in ("active", "processed"):
        if isinstance(event.get(key), int) and not isinstance(event[key], bool) and event[key] >= 0:
            values[key] = event[key]
    if isinstance(event.get("loadavg"), list):
        values["load"] = [x for x in event["loadavg"] if isinstance(x, (int, float))][:3]
    if p.type == "worker-offline":
        values.update(stopped_at=p.at, active=0)
    else:
        values["stopped_at"] = None
        if p.type == "worker-online":
            values["started_at"] = p.at
    return values


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def keeps_raw_rows() -> bool:
    """``False`` when a retention setting of 0 says no raw row is to be kept."""
    return settings.EVENTS_KEEP_SECONDS > 0 and settings.EVENTS_KEEP_ROWS > 0


def prune(now: datetime | None = None, using: str = "default") -> dict[str, int]:
    """Delete what the retention settings no longer keep; the rows deleted per table.

    Raw events: older than ``EVENTS_KEEP_SECONDS`` (by their timestamp), and
    all but the newest ``EVENTS_KEEP_ROWS`` (by insertion). Roll-ups: minutes
    older than ``ACTIVITY_KEEP_DAYS``.
    """
    from .models import TaskActivity, TaskEvent

    now = now or timezone.now()
    events = TaskEvent.objects.using(using)
    removed = events.filter(timestamp__lt=now - timedelta(seconds=settings.EVENTS_KEEP_SECONDS)).delete()[0]
    keep = max(int(settings.EVENTS_KEEP_ROWS), 0)
    boundary = list(events.order_by("-id").values_list("id", flat=True)[keep:keep + 1])
    if boundary:
        removed += events.filter(id__lte=boundary[0]).delete()[0]
    old = now - timedelta(days=settings.ACTIVITY_KEEP_DAYS)
    activity = TaskActivity.objects.using(using).filter(minute__lt=old).delete()[0]
    return {"events": removed, "activity": activity}


def activity_series(window: timedelta, buckets: int, *, now: datetime | None = None) -> list[dict]:
    """Task outcomes over the last ``window``, in ``buckets`` equal slices, oldest first.

    Each slice is ``{"start": ISO 8601, "succeeded", "failed", "retried",
    "runtime_avg"}``: counts summed over every task name from
    ``TaskActivity``, and the mean runtime of the succeeded tasks in seconds
    (``None`` when none succeeded). The last slice ends with the current
    minute; minutes are the resolution, so slices shorter than a minute
    leave some empty.
    """
    from .models import TaskActivity

    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise ValueError(f"activity_series: window must be a positive timedelta, got {window!r}")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"activity_series: buckets must be a positive int, got {buckets!r}")
    now = now or timezone.now()
    end = now.astimezone(dt_timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - window
    size = window / buckets
    series: list[dict[str, Any]] = [
        {"start": (start + size * i).isoformat(), "succeeded": 0, "failed": 0, "retried": 0,
         "runtime_avg": None, "_runtime": 0.0} for i in range(buckets)]
    rows = (TaskActivity.objects.filter(minute__gte=start, minute__lt=end).values("minute")
            .annotate(succeeded=Sum("succeeded"), failed=Sum("failed"), retried=Sum("retried"),
                      runtime=Sum("runtime_total")))
    for row in rows:
        slot = series[min(int((row["minute"] - start) / size), buckets - 1)]
        for key in ("succeeded", "failed", "retried"):
            slot[key] += row[key] or 0
        slot["_runtime"] += row["runtime"] or 0.0
    for slot in series:
        runtime = slot.pop("_runtime")
        if slot["succeeded"]:
            slot["runtime_avg"] = runtime / slot["succeeded"]
    return series


def record(events: Iterable[Any], **options: Any) -> int:
    """Record ``events`` at once (tests, and code that has events in hand); the number written."""
    recorder = EventRecorder(**options)
    for event in events:
        recorder.add(event)
    return recorder.flush()


__all__ = ["BadEvent", "EventRecorder", "TaskNames", "activity_series", "keeps_raw_rows", "parse", "prune", "record"]
