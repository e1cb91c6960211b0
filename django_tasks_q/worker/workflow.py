"""What a worker does after a task for the canvas: callbacks, the next chain step, errbacks.

Called by the executor (``worker/executor.py``) once the outcome is stored:

* success -> ``on_success``: each ``link`` is sent with the result prepended
  (unless immutable), then the next ``embed["chain"]`` step is sent with the
  result prepended and the rest of the chain, as Celery's ``trace.py`` does.
* failure -> ``on_failure``: errbacks run (Celery's arity rule, see below), and
  every later chain step is recorded FAILURE with the same cause under the
  task id the chain gave it, so ``chain_result.get()`` raises instead of
  waiting for a step that will never run. (Celery leaves those PENDING.)

Errbacks follow Celery's ``_call_task_errbacks`` arity rule; sending and
calling them (and links, and chain steps) is ``core/callbacks.py``, shared
with the result backends that send a chord's body.

Nothing here raises: a broken callback is logged, the task's outcome stands.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core import context
from ..core.callbacks import call_errbacks, sendable
from ..core.callbacks import send as _send
from ..core.canvas import signature
from ..core.protocol import TaskMessage
from ..core.states import TaskState
from ..results.backend import describe_exception

logger = logging.getLogger(__name__)

__all__ = ["call_errbacks", "fail_chain", "on_failure", "on_success", "sendable"]


def on_success(message: TaskMessage, retval: Any, request: context.Request) -> None:
    """Send the callbacks, then the next chain step, each with ``retval`` as first argument."""
    for link in message.callbacks or []:
        _send("link", signature(link), (retval,), parent_id=request.id, root_id=request.root_id)
    if message.chain:
        rest = list(message.chain)
        step = signature(rest.pop())  # the chain travels in reverse: the next step is last
        if not _send("chain step", step, (retval,), chain=rest or None, parent_id=request.id,
                     root_id=request.root_id):
            error = RuntimeError(f"chain step {step.task} could not be sent after {message.task}[{message.id}]")
            fail_chain([dict(step), *rest], error, "", request.backend)


def on_failure(message: TaskMessage, request: context.Request, exc: BaseException, einfo: str,
               backend: Any = None) -> None:
    """Run the errbacks and fail the chain steps that will now never run."""
    call_errbacks(message.errbacks, request, exc, einfo)
    if message.chain:
        fail_chain(message.chain, exc, einfo, backend or request.backend)


def fail_chain(remaining: list, exc: BaseException, einfo: str, backend: Any) -> None:
    """Record FAILURE with ``exc`` on every remaining chain step that has a task id."""
    from ..results.backend import get_backend

    target = backend or get_backend()
    for step in remaining:
        task_id = (step.get("options") or {}).get("task_id")
        if not task_id:
            continue
        try:
            target.mark(task_id, TaskState.FAILURE, result=describe_exception(exc), traceback=einfo,
                        task_name=step.get("task") or "")
        except Exception:
            logger.exception("could not record chain step %s[%s] as failed", step.get("task"), task_id)
