"""``task.apply()`` and ``ALWAYS_EAGER``: run through the worker's own ladder, here and now.

The same ``execute()`` a worker uses runs the task, so hooks, signals,
autoretry and failure handling behave alike; states go to an in-memory
backend instead of the configured one, and retries run again at once.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from ..conf import settings
from ..core.options import CallOptions
from ..core.states import TaskState
from ..results.async_result import EagerResult
from ..results.backend import MemoryBackend
from .executor import execute

if TYPE_CHECKING:
    from ..core.task import Task


def execute_eagerly(task: Task, args: tuple, kwargs: dict, options: dict[str, Any]) -> EagerResult:
    task_id = options.get("task_id") or str(uuid.uuid4())
    backend = MemoryBackend()
    retries = 0
    while True:  # only the id and the links of the call's options are kept (core/canvas.py, _EAGER_OPTIONS)
        call = CallOptions(task_id=task_id, retries=retries, link=options.get("link"),
                           link_error=options.get("link_error"))
        message = call.to_message(task.name, args, kwargs, None, timezone.now())
        outcome = execute(message, {"queue": None, "is_eager": True}, None, backend=backend, eager=True)
        if outcome.state != TaskState.RETRY:
            break
        retries += 1
        retry = outcome.retry
        if retry is not None and retry.retry_args is not None:
            args = tuple(retry.retry_args)
        if retry is not None and retry.retry_kwargs is not None:
            kwargs = dict(retry.retry_kwargs)
    if outcome.exception is not None and settings.EAGER_PROPAGATES:
        raise outcome.exception
    return EagerResult(task_id, outcome.state, outcome.retval, outcome.traceback, task_name=task.name,
                       exception=outcome.exception)
