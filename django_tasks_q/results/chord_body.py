"""What a chord-counting result backend does once a chord has failed: record its body as FAILURE.

Shared by the ORM counter (``results/database_chords.py``) and Celery's
Redis chord keys (``results/redis_chords.py``). The body never runs: every
step of it (a chain body has several) is recorded FAILURE with the
``ChordError`` under the task id the caller gave it, and the body's
``link_error`` errbacks are called or sent (``core/callbacks.py``).
"""

from __future__ import annotations

from typing import Any

from ..core import context
from ..core.callbacks import call_errbacks
from ..core.states import TaskState
from ..exceptions import ChordError
from .backend import ResultBackend, describe_exception


def record_body_failure(body: dict, error: ChordError, backend: ResultBackend) -> None:
    """Record every step of ``body`` FAILURE with ``error`` on ``backend``, then run its errbacks."""
    options = body.get("options") or {}
    # a chain body: every step fails (none will run); its first step's id names the failure for errbacks
    steps = (body.get("kwargs") or {}).get("tasks") if body.get("subtask_type") == "chain" else [body]
    body_id = None
    for step in steps or []:
        step_id = (step.get("options") or {}).get("task_id")
        if step_id:
            body_id = body_id or step_id
            backend.mark(step_id, TaskState.FAILURE, result=describe_exception(error), traceback=str(error),
                         task_name=step.get("task") or "")
    request = context.Request(id=body_id, task=body.get("task"), root_id=options.get("root_id") or body_id)
    errbacks: Any = options.get("link_error") or []
    if isinstance(errbacks, dict):  # a Celery client's signature(..., link_error=sig) keeps a single one
        errbacks = [errbacks]
    call_errbacks(list(errbacks), request, error, str(error))


__all__ = ["record_body_failure"]
