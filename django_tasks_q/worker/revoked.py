"""REVOKED: the one bookkeeping for a task that does not finish on its own.

A task is REVOKED when the worker drops it before it runs (it was revoked,
or its ``expires`` passed: ``Worker._drop_revoked``, which also acks the
message and sends the ``task-revoked`` event) or when it is terminated while
it runs (``executor.execute``, ``executor.record_stopped``). Each of those
paths logs in its own words; :func:`record_revoked` is what they share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..core.context import Request
from ..core.states import TaskState
from ..results.backend import describe_exception
from .revocations import send_task_revoked

logger = logging.getLogger(__name__)


def record_revoked(backend: Any, request: Request, error: BaseException, *, store: bool = True,
                   traceback: str = "", terminated: bool = False, signum: int | None = None,
                   expired: bool = False, settle: Callable[[], None] | None = None,
                   best_effort: bool = False) -> None:
    """Store REVOKED with ``error`` (unless ``store`` is false), call ``settle`` (the worker acks a dropped
    message there), then send ``task_revoked``.

    ``best_effort``: a store that fails is logged and the rest still happens
    (a dropped message is acked all the same); else the error propagates
    before anything else, for the caller's ladder to decide.
    """
    if store:
        try:
            backend.mark(request.id, TaskState.REVOKED, result=describe_exception(error), traceback=traceback,
                         request=request, task_name=request.task or "", runtime=None)
        except Exception:
            if not best_effort:
                raise
            logger.exception("could not record %s for %s", TaskState.REVOKED, request.id)
    if settle is not None:
        settle()
    send_task_revoked(request.task or "", request, terminated=terminated, signum=signum, expired=expired)
