"""From ``apply_async``/``send_task`` arguments to a published message."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from ..broker.publisher import publish
from ..conf import settings
from .options import CallOptions
from .protocol import TaskMessage, absolute_time
from .registry import registry
from .routing import resolve

if TYPE_CHECKING:
    from ..results.async_result import AsyncResult
    from .task import Task


def _signature_dicts(value: Any) -> list | None:
    """``link=sig`` or ``link=[sig, ...]`` as protocol embed dicts."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [dict(item) for item in items]


def send(name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Task | None = None) -> AsyncResult:
    """Validate, route, encode and publish one call; return its ``AsyncResult``."""
    from ..results.async_result import AsyncResult

    where = f"{name}.apply_async()"
    call = CallOptions.from_kwargs(where, **options)
    task = task or registry.get(name)
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    if settings.ALWAYS_EAGER and task is not None:
        return task.apply(args, kwargs, task_id=call.task_id)
    task_opts = task.options if task is not None else None
    now = timezone.now()
    eta = call.eta if call.eta is not None else absolute_time(call.countdown, now)
    expires = call.expires if call.expires is not None else (task_opts.expires if task_opts else None)
    task_id = call.task_id or str(uuid.uuid4())
    message = TaskMessage(
        id=task_id,
        task=name,
        args=args,
        kwargs=kwargs,
        eta=absolute_time(eta, now),
        expires=absolute_time(expires, now),
        retries=call.retries,
        time_limit=call.time_limit if call.time_limit is not None else (task_opts.time_limit if task_opts else None),
        soft_time_limit=call.soft_time_limit if call.soft_time_limit is not None
        else (task_opts.soft_time_limit if task_opts else None),
        root_id=call.root_id,
        parent_id=call.parent_id,
        group_id=call.group_id,
        group_index=call.group_index,
        ignore_result=call.ignore_result if call.ignore_result is not None
        else (task_opts.ignore_result if task_opts else False),
        callbacks=_signature_dicts(call.link),
        errbacks=_signature_dicts(call.link_error),
        chain=call.chain,
        chord=call.chord,
        extra_headers=call.headers,
    )
    serializer = call.serializer or (task_opts.serializer if task_opts else None) or settings.TASK_SERIALIZER
    encoded = message.encode(serializer, settings.SIGNING_KEY)
    task_route = {"queue": task_opts.queue, "routing_key": task_opts.routing_key,
                  "priority": task_opts.priority} if task_opts else {}
    route = resolve(name, call={"queue": call.queue, "routing_key": call.routing_key, "exchange": call.exchange,
                                "priority": call.priority}, task=task_route)
    publish(encoded, route, task_id=task_id)
    return AsyncResult(task_id, task_name=name)


def send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult:
    """Send a task by name without importing it (it may exist only on workers)."""
    return send(name, args, kwargs, options)
