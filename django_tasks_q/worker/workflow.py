"""What a worker does after a task for the canvas: callbacks, the next chain step, errbacks.

Called by the executor (``worker/executor.py``) once the outcome is stored:

* success -> ``on_success``: each ``link`` is sent with the result prepended
  (unless immutable), then the next ``embed["chain"]`` step is sent with the
  result prepended and the rest of the chain, as Celery's ``trace.py`` does.
* failure -> ``on_failure``: errbacks run (Celery's arity rule, below), and
  every later chain step is recorded FAILURE with the same cause under the
  task id the chain gave it, so ``chain_result.get()`` raises instead of
  waiting for a step that will never run. (Celery leaves those PENDING.)

Errbacks, as Celery's ``_call_task_errbacks``: when the errback's task is
registered here and takes more than one positional argument, it is *called*
in this process with ``(request, exc, traceback)`` (then its own partial
args); otherwise (an old-style errback, or one this worker does not know) it
is sent as a message with the failed task's id prepended.

Nothing here raises: a broken callback is logged, the task's outcome stands.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import fields
from typing import Any

from ..core import context
from ..core.canvas import Signature, signature
from ..core.options import CallOptions
from ..core.protocol import TaskMessage
from ..core.registry import registry
from ..core.states import TaskState
from ..results.backend import describe_exception

logger = logging.getLogger(__name__)

_CALL_OPTIONS = {f.name for f in fields(CallOptions)}


def sendable(sig: Signature) -> Signature:
    """Drop options a Celery client may embed that mean nothing here (``reply_to``, ``stamps``...)."""
    unknown = [k for k in sig.options if k not in _CALL_OPTIONS]
    for key in unknown:
        sig.options.pop(key)
    if unknown:
        logger.debug("signature %s: ignoring options %s", sig.task, ", ".join(sorted(unknown)))
    return sig


def _send(what: str, sig: Signature, args: tuple, **options: Any) -> bool:
    try:
        sendable(sig).apply_async(args, **{k: v for k, v in options.items() if v is not None})
    except Exception:
        logger.exception("could not send %s %s; the task's outcome stands", what, sig.get("task"))
        return False
    return True


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


def _takes_request(sig: Signature) -> bool:
    """Celery's ``arity_greater(task.__header__, 1)``: more than one positional parameter, or ``*args``."""
    task = registry.get(sig.task)
    if task is None:
        return False
    params = list(inspect.signature(task.function).parameters.values())
    if task.options.bind and params:
        params = params[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) > 1


def call_errbacks(errbacks: list | None, request: context.Request, exc: BaseException, einfo: str) -> None:
    for errback in errbacks or []:
        try:
            sig = signature(errback)
        except Exception:
            logger.exception("unreadable errback %r of %s[%s]", errback, request.task, request.id)
            continue
        if _takes_request(sig):
            try:
                sig(request, exc, einfo)
            except Exception:
                logger.exception("errback %s raised; the task's outcome stands", sig.task)
        else:
            _send("errback", sig, (request.id,), parent_id=request.id, root_id=request.root_id)
