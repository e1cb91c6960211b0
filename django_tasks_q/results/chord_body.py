"""What a chord-counting result backend does once a chord's header is decided: send its body, or fail it.

Shared by the ORM counter (``results/database_chords.py``), Celery's Redis
chord keys (``results/redis_chords.py``) and the cache counter
(``results/cache_chords.py``), which differ only in how they count.

``send_body`` sends the body with the header's results as its first
argument; a body that cannot be sent is recorded as failed, never dropped.
On failure the body never runs: every step of it (a chain body has several)
is recorded FAILURE with the ``ChordError`` under the task id the caller
gave it, and the body's ``link_error`` errbacks are called or sent
(``core/callbacks.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..core import context
from ..core.callbacks import call_errbacks, sendable
from ..core.states import TaskState
from ..exceptions import ChordError
from .backend import ResultBackend, describe_exception

if TYPE_CHECKING:
    from ..core.protocol import TaskMessage

logger = logging.getLogger(__name__)


def chord_members_ahead(message: TaskMessage) -> Iterator[dict[str, Any]]:
    """The options of the steps still ahead in ``message``'s chain that are chord members (a ``group_id``
    and a ``chord`` body): when the chain fails before them they never run, so every backend counts them
    failed at once, or their chord would wait for them forever (as Celery does)."""
    for step in message.chain or []:
        options = (step.get("options") or {}) if isinstance(step, dict) else {}
        if options.get("group_id") and isinstance(options.get("chord"), dict):
            yield options


def send_body(body: dict, results: list, group_id: str, backend: ResultBackend) -> bool:
    """Send ``body`` with ``results`` (the header's, in order); False when it could not be sent, which is
    recorded as the body's failure."""
    from ..core.canvas import signature

    try:
        sendable(signature(body)).apply_async((results,))
    except Exception as exc:  # the body could not be sent: a recorded failure, never a silent drop
        logger.exception("chord %s: could not send its body %s", group_id, body.get("task"))
        record_body_failure(body, ChordError(f"chord {group_id}: could not send body {body.get('task')}: "
                                             f"{type(exc).__name__}: {exc}"), backend)
        return False
    return True


def fail_for_member(body: dict, group_id: str, member: str, retval: Any, backend: ResultBackend) -> None:
    """The chord failed because ``member`` (``"task.name[id]"``) ended with ``retval`` (its exception)."""
    cause = f"{type(retval).__name__}: {retval}" if isinstance(retval, BaseException) else str(retval)
    error = ChordError(f"chord member {member} failed: {cause}")
    logger.error("chord %s failed: %s", group_id, error)
    record_body_failure(body, error, backend)


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


__all__ = ["fail_for_member", "record_body_failure", "send_body"]
