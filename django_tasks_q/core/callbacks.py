"""Sending a canvas callback from wherever a task's outcome is known: links, errbacks, chord bodies.

Used by the worker after a task (``worker/workflow.py``), by the result
backends when a chord's header is decided (``results/chord_body.py``), and by
an eager chord (``core/groups.py``). It lives in ``core`` so that the result
backends need nothing from ``worker``.

Errbacks, as Celery's ``_call_task_errbacks``: when the errback's task is
registered here and takes more than one positional argument, it is *called*
in this process with ``(request, exc, traceback)`` (then its own partial
args); otherwise (an old-style errback, or one this process does not know)
it is sent as a message with the failed task's id prepended.

Nothing here raises: a broken callback is logged, the task's outcome stands.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import fields
from typing import Any

from . import context
from .canvas import Signature, signature
from .options import CallOptions
from .registry import registry

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


def send(what: str, sig: Signature, args: tuple, **options: Any) -> bool:
    """Send ``sig`` with ``args`` prepended; False (and logged) when it could not be sent."""
    try:
        sendable(sig).apply_async(args, **{k: v for k, v in options.items() if v is not None})
    except Exception:
        logger.exception("could not send %s %s; the task's outcome stands", what, sig.get("task"))
        return False
    return True


def takes_request(sig: Signature) -> bool:
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
    """Call or send each errback of the failed task ``request`` (the arity rule above)."""
    for errback in errbacks or []:
        try:
            sig = signature(errback)
        except Exception:
            logger.exception("unreadable errback %r of %s[%s]", errback, request.task, request.id)
            continue
        if takes_request(sig):
            try:
                sig(request, exc, einfo)
            except Exception:
                logger.exception("errback %s raised; the task's outcome stands", sig.task)
        else:
            send("errback", sig, (request.id,), parent_id=request.id, root_id=request.root_id)


__all__ = ["call_errbacks", "send", "sendable", "takes_request"]
