"""The ORM result backend: one ``TaskResult`` row per task id.

Each state change is a single upsert (``INSERT ... ON CONFLICT DO UPDATE``)
that touches only the columns that state owns, so RECEIVED, STARTED and
SUCCESS cost one query each and never overwrite each other's dates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import close_old_connections
from django.db.utils import DatabaseError
from django.utils import timezone

from ..core.states import READY_STATES, TaskState
from .backend import ResultBackend, ResultMeta

_COMMON = ["state", "task_name", "result", "traceback", "retries"]
_BY_STATE = {
    TaskState.RECEIVED: ["date_received", "worker", "queue", "args", "kwargs"],
    TaskState.STARTED: ["date_started", "worker"],
}
_DONE = ["date_done", "runtime", "worker"]


class DatabaseBackend(ResultBackend):
    def mark(self, task_id: str, state: str, *, result: Any = None, traceback: str = "",
             request: Any = None, task_name: str = "", runtime: float | None = None) -> None:
        from ..models import TaskResult

        now = timezone.now()
        row = TaskResult(task_id=task_id, state=state, result=result, traceback=traceback or "",
                         task_name=task_name or getattr(request, "task", "") or "", runtime=runtime)
        if request is not None:
            row.args = list(request.args)
            row.kwargs = dict(request.kwargs)
            row.worker = request.hostname or ""
            row.queue = (request.delivery_info or {}).get("queue") or ""
            row.retries = request.retries
            row.parent_id = request.parent_id or ""
            row.root_id = request.root_id or ""
            row.group_id = request.group_id or ""
        if state == TaskState.RECEIVED:
            row.date_received = now
        elif state == TaskState.STARTED:
            row.date_started = now
        elif state in READY_STATES:
            row.date_done = now
        fields = _COMMON + _BY_STATE.get(state, _DONE if state in READY_STATES else [])
        try:
            TaskResult.objects.bulk_create([row], update_conflicts=True, unique_fields=["task_id"],
                                           update_fields=fields)
        except DatabaseError:
            close_old_connections()  # a dropped connection: retry once on a fresh one
            TaskResult.objects.bulk_create([row], update_conflicts=True, unique_fields=["task_id"],
                                           update_fields=fields)

    def meta(self, task_id: str) -> ResultMeta | None:
        from ..models import TaskResult

        row = (TaskResult.objects.filter(task_id=task_id)
               .values("state", "result", "traceback", "date_done", "task_name", "retries").first())
        if row is None:
            return None
        return ResultMeta(task_id=task_id, **row)

    def forget(self, task_id: str) -> None:
        from ..models import TaskResult

        TaskResult.objects.filter(task_id=task_id).delete()

    def cleanup(self, older_than: datetime) -> int:
        from ..models import TaskResult

        deleted, _ = TaskResult.objects.filter(state__in=READY_STATES, date_done__lt=older_than).delete()
        return deleted
