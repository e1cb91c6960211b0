"""``/metrics``: Prometheus text exposition (format 0.0.4), computed from the database and broker per scrape.

Families:

* ``tasksq_tasks{state}`` -- stored results by state (a gauge: results
  expire after ``RESULT_EXPIRES``);
* ``tasksq_task_runtime_seconds{task}`` -- a histogram of the runtimes of
  stored results, so it covers the ``RESULT_EXPIRES`` window and can go
  down when results expire (Prometheus reads that as a counter reset);
* ``tasksq_queue_messages{queue}`` -- messages waiting, read from the broker;
* ``tasksq_workers_online`` and, per worker, ``tasksq_worker_processed_total``
  / ``tasksq_worker_failed_total`` / ``tasksq_worker_active``.

No client library is needed for a text format this small; label values are
escaped as the format requires.
"""

from __future__ import annotations

from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse

from ..models import TaskResult
from . import snapshot
from .access import can_read

#: Histogram upper bounds in seconds (Prometheus' defaults, stretched to five minutes for background work).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float | int | None) -> str:
    return "NaN" if value is None else repr(float(value)) if isinstance(value, float) else str(value)


class Exposition:
    """Lines of one exposition: each family's HELP and TYPE once, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float | int | None, **labels: object) -> None:
        pairs = ",".join(f'{key}="{label(val)}"' for key, val in labels.items())
        self.lines.append(f"{name}{{{pairs}}} {number(value)}" if pairs else f"{name} {number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _tasks_by_state(out: Exposition) -> None:
    out.family("tasksq_tasks", "gauge", "Stored task results by state.")
    counts = snapshot.counts_by_state()
    for state in snapshot.STATES:
        out.sample("tasksq_tasks", counts.get(state, 0), state=state)


def _runtime_histogram(out: Exposition) -> None:
    out.family("tasksq_task_runtime_seconds", "histogram", "Runtime of tasks with a stored result, by task.")
    buckets = {f"le_{index}": Count("pk", filter=Q(runtime__lte=bound)) for index, bound in enumerate(BUCKETS)}
    rows = (TaskResult.objects.filter(runtime__isnull=False).values("task_name")
            .annotate(total=Count("pk"), seconds=Sum("runtime"), **buckets).order_by("task_name"))
    for row in rows:
        task = row["task_name"] or "<unknown>"
        for index, bound in enumerate(BUCKETS):
            count = row[f"le_{index}"]  # type: ignore[literal-required]  # stubs drop **buckets keys
            out.sample("tasksq_task_runtime_seconds_bucket", count, task=task, le=bound)
        out.sample("tasksq_task_runtime_seconds_bucket", row["total"], task=task, le="+Inf")
        out.sample("tasksq_task_runtime_seconds_sum", float(row["seconds"] or 0.0), task=task)
        out.sample("tasksq_task_runtime_seconds_count", row["total"], task=task)


def _workers_and_queues(out: Exposition) -> None:
    listed = snapshot.workers()
    out.family("tasksq_workers_online", "gauge", "Workers whose heartbeat is current.")
    out.sample("tasksq_workers_online", sum(1 for worker in listed if worker["online"]))
    for name, field, kind, help_text in (
            ("tasksq_worker_processed_total", "processed", "counter", "Tasks a worker has finished."),
            ("tasksq_worker_failed_total", "failed", "counter", "Tasks that failed on a worker."),
            ("tasksq_worker_active", "active", "gauge", "Tasks running on a worker at its last heartbeat.")):
        out.family(name, kind, help_text)
        for worker in listed:
            if worker["online"]:
                out.sample(name, worker[field], worker=worker["hostname"])
    out.family("tasksq_queue_messages", "gauge", "Messages waiting in a queue, read from the broker.")
    for queue in snapshot.queues(listed):
        if queue["messages"] is not None:
            out.sample("tasksq_queue_messages", queue["messages"], queue=queue["name"])


@can_read
def metrics(request: HttpRequest) -> HttpResponse:
    out = Exposition()
    _tasks_by_state(out)
    _runtime_histogram(out)
    _workers_and_queues(out)
    return HttpResponse(out.text(), content_type=CONTENT_TYPE)
