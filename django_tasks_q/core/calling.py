"""From ``apply_async``/``send_task`` arguments to a published message."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from ..broker.delayed import deliver_at
from ..broker.publisher import publish
from ..conf import settings
from ..results.async_result import AsyncResult
from .options import CallOptions, TaskOptions
from .protocol import TaskMessage, absolute_time
from .registry import registry
from .routing import resolve

if TYPE_CHECKING:
    from .task import Task


def _signature_dicts(value: Any) -> list | None:
    """``link=sig`` or ``link=[sig, ...]`` as protocol embed dicts."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [dict(item) for item in items]


def _first(call_value: Any, task_opts: TaskOptions | None, name: str, default: Any = None) -> Any:
    """The call's value, else the task's declared option, else ``default``."""
    if call_value is not None:
        return call_value
    if task_opts is not None and getattr(task_opts, name) is not None:
        return getattr(task_opts, name)
    return default


def send(name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Task | None = None) -> AsyncResult:
    """Validate, route, encode and publish one call; return its ``AsyncResult``."""
    conf = settings.as_dict()  # one read of the settings per call
    call = CallOptions.from_kwargs(f"{name}.apply_async()", **options)
    task = task or registry.get(name)
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    if conf["ALWAYS_EAGER"] and task is not None:
        return task.apply(args, kwargs, task_id=call.task_id, link=call.link, link_error=call.link_error)
    opts = task.options if task is not None else None
    now = timezone.now()
    task_id = call.task_id or str(uuid.uuid4())
    message = TaskMessage(
        id=task_id,
        task=name,
        args=args,
        kwargs=kwargs,
        eta=call.eta if call.eta is not None else absolute_time(call.countdown, now),
        expires=absolute_time(_first(call.expires, opts, "expires"), now),
        retries=call.retries,
        time_limit=_first(call.time_limit, opts, "time_limit"),
        soft_time_limit=_first(call.soft_time_limit, opts, "soft_time_limit"),
        root_id=call.root_id,
        parent_id=call.parent_id,
        group_id=call.group_id,
        group_index=call.group_index,
        ignore_result=_first(call.ignore_result, opts, "ignore_result", False),
        callbacks=_signature_dicts(call.link),
        errbacks=_signature_dicts(call.link_error),
        chain=call.chain,
        chord=call.chord,
        extra_headers=call.headers,
    )
    encoded = message.encode(_first(call.serializer, opts, "serializer", conf["TASK_SERIALIZER"]),
                             conf["SIGNING_KEY"])
    declared = {"queue": opts.queue, "routing_key": opts.routing_key, "priority": opts.priority} if opts else {}
    route = resolve(name, call={"queue": call.queue, "routing_key": call.routing_key, "exchange": call.exchange,
                                "priority": call.priority}, task=declared)
    publish(encoded, route, task_id=task_id, deliver_at=deliver_at(message.eta, conf["ETA_HOLD_MAX"]))
    return AsyncResult(task_id, task_name=name)


def send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult:
    """Send a task by name without importing it (it may exist only on workers)."""
    return send(name, args, kwargs, options)
