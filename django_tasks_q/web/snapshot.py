"""What the fleet looks like now, as plain dicts: read by the JSON API, the dashboard and ``/metrics``.

Workers come from their ``Worker`` rows (kept current by heartbeats), tasks
from ``TaskResult`` rows (the ORM result backend; with a Redis result
backend the task lists are empty and a task's detail is read from Redis),
queue depths from the broker itself, asked once per call.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, QuerySet
from django.utils import timezone

from ..conf import settings
from ..core.states import READY_STATES, TaskState
from ..models import TaskResult, Worker

#: States a task can be listed by (the API refuses any other ``state=``).
STATES = tuple(TaskState.values) + ("PROGRESS",)
#: A task whose ``PROGRESS`` meta names ``current`` and ``total`` gets a progress bar.
RUNNING_STATES = ("STARTED", "PROGRESS")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def worker_dict(worker: Worker, now: datetime) -> dict[str, Any]:
    return {
        "hostname": worker.hostname, "online": worker.is_online(now), "pid": worker.pid,
        "queues": list(worker.queues or []), "pool": worker.pool, "concurrency": worker.concurrency,
        "version": worker.version, "started_at": _iso(worker.started_at),
        "last_heartbeat": _iso(worker.last_heartbeat), "stopped_at": _iso(worker.stopped_at),
        "processed": worker.processed, "failed": worker.failed, "active": worker.active,
        "load": list(worker.load or []), "problem": worker.problem,
    }


def workers() -> list[dict[str, Any]]:
    """Every worker ever seen, online ones first; an offline worker stays listed as offline."""
    now = timezone.now()
    rows = [worker_dict(worker, now) for worker in Worker.objects.order_by("hostname")]
    return sorted(rows, key=lambda row: not row["online"])


def queue_names(online_workers: list[dict[str, Any]] | None = None) -> list[str]:
    """DEFAULT_QUEUE, ``TASKS_Q["QUEUES"]``, ``Queue`` rows and whatever an online worker consumes."""
    from ..core.routing import route_table

    names = {settings.DEFAULT_QUEUE, *(settings.QUEUES or {}), *route_table().queues}
    for worker in online_workers if online_workers is not None else workers():
        if worker["online"]:
            names.update(worker["queues"])
    return sorted(name for name in names if name)


def queues(online_workers: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each known queue with the messages waiting in it (read from the broker) and its consumers.

    ``messages`` is ``None`` with an ``error`` when the broker could not say
    (unreachable, or on RabbitMQ a queue nobody has declared yet).
    """
    from ..broker.connection import new_connection
    from ..broker.queues import get_queue
    from ..worker.monitor import queue_depth

    listed = online_workers if online_workers is not None else workers()
    rows = []
    names = queue_names(listed)
    try:
        with new_connection() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            for name in names:
                row: dict[str, Any] = {"name": name, "messages": None, "error": None,
                                       "consumers": [w["hostname"] for w in listed
                                                     if w["online"] and name in w["queues"]]}
                try:
                    row["messages"] = queue_depth(channel, get_queue(name))
                except connection.channel_errors as exc:  # AMQP: not declared yet; the channel is closed
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    channel = connection.channel()
                rows.append(row)
    except Exception as exc:  # the broker is down: say so per queue rather than failing the page
        done = {row["name"] for row in rows}
        rows += [{"name": name, "messages": None, "error": f"broker unavailable: {type(exc).__name__}: {exc}",
                  "consumers": []} for name in names if name not in done]
    return rows


def progress(row: TaskResult) -> dict[str, Any] | None:
    """``{"current", "total", "percent"}`` from a PROGRESS meta such as ``{"current": 3, "total": 10}``."""
    meta = row.result
    if row.state != "PROGRESS" or not isinstance(meta, dict):
        return None
    current, total = meta.get("current"), meta.get("total")
    if not isinstance(current, (int, float)) or not isinstance(total, (int, float)) or total <= 0:
        return None
    return {"current": current, "total": total, "percent": round(max(0.0, min(100.0, 100.0 * current / total)), 1)}


def task_dict(row: TaskResult, full: bool = False) -> dict[str, Any]:
    data = {
        "task_id": row.task_id, "name": row.task_name, "state": row.state, "worker": row.worker,
        "queue": row.queue, "retries": row.retries, "runtime": row.runtime,
        "date_created": _iso(row.date_created), "date_started": _iso(row.date_started),
        "date_done": _iso(row.date_done), "progress": progress(row),
    }
    if full:
        data.update(args=row.args, kwargs=row.kwargs, result=row.result, traceback=row.traceback,
                    parent_id=row.parent_id, root_id=row.root_id, group_id=row.group_id,
                    date_received=_iso(row.date_received))
    return data


def tasks(state: str | None = None, name: str | None = None) -> QuerySet:
    """Stored results, newest first, filtered by state and by task name (a substring)."""
    rows = TaskResult.objects.order_by("-date_created")
    if state:
        rows = rows.filter(state=state)
    if name:
        rows = rows.filter(task_name__icontains=name)
    return rows


def task_detail(task_id: str) -> dict[str, Any] | None:
    """The stored row; with another result backend, what that backend holds for the id."""
    row = TaskResult.objects.filter(task_id=task_id).first()
    if row is not None:
        return task_dict(row, full=True)
    if settings.RESULT_BACKEND in (None, "django"):
        return None
    from ..results.backend import get_backend

    meta = get_backend().meta(task_id)
    if meta is None:
        return None
    return {"task_id": task_id, "name": meta.task_name, "state": meta.state, "result": meta.result,
            "traceback": meta.traceback, "retries": meta.retries, "date_done": _iso(meta.date_done)}


def running(limit: int = 50) -> list[dict[str, Any]]:
    return [task_dict(row) for row in TaskResult.objects.filter(state__in=RUNNING_STATES)
            .order_by("date_started", "date_created")[:limit]]


def recent_failures(limit: int = 10) -> list[dict[str, Any]]:
    return [task_dict(row, full=True) for row in TaskResult.objects.filter(state=TaskState.FAILURE)
            .order_by("-date_done")[:limit]]


def counts_by_state() -> dict[str, int]:
    return {row["state"]: row["n"] for row in TaskResult.objects.values("state").annotate(n=Count("pk"))}


def series(window: timedelta, buckets: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """Finished and failed tasks per time bucket over the last ``window``, oldest first.

    Read from the per-minute roll-ups ``taskevents`` keeps (:mod:`django_tasks_q.eventstore`); where it
    has recorded nothing in the window, counted from stored results instead.
    """
    from ..eventstore import activity_series

    now = now or timezone.now()
    recorded = activity_series(window, buckets, now=now)
    if any(bucket["succeeded"] or bucket["failed"] or bucket["retried"] for bucket in recorded):
        return recorded
    return _series_from_results(window, buckets, now)


def _series_from_results(window: timedelta, buckets: int, now: datetime) -> list[dict[str, Any]]:
    step = window / buckets
    start = now - window
    rows = (TaskResult.objects.filter(date_done__gt=start, date_done__lte=now, state__in=[*READY_STATES, "RETRY"])
            .values_list("date_done", "state", "runtime"))
    out: list[dict[str, Any]] = [{"start": (start + step * i).isoformat(), "succeeded": 0, "failed": 0,
                                  "retried": 0, "runtime_avg": None, "_runtimes": []} for i in range(buckets)]
    names: dict[str, str] = {TaskState.SUCCESS: "succeeded", TaskState.FAILURE: "failed", TaskState.RETRY: "retried"}
    for done, state, runtime in rows:
        assert done is not None  # filtered on date_done above
        index = min(buckets - 1, int((done - start) / step))
        if state in names:
            out[index][names[state]] += 1
        if runtime is not None:
            out[index]["_runtimes"].append(runtime)
    for bucket in out:
        runtimes = bucket.pop("_runtimes")
        bucket["runtime_avg"] = sum(runtimes) / len(runtimes) if runtimes else None
    return out


def dashboard() -> dict[str, Any]:
    """Everything the dashboard page shows, in one response."""
    listed = workers()
    return {
        "now": timezone.now().isoformat(),
        "workers": listed,
        "queues": queues(listed),
        "running": running(),
        "failures": recent_failures(),
        "counts": counts_by_state(),
        "hour": series(timedelta(hours=1), 60),
        "day": series(timedelta(days=1), 96),
    }
