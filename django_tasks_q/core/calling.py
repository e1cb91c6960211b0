"""From ``apply_async``/``send_task`` arguments to a published message."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from ..broker.delayed import deliver_at
from ..broker.publisher import publish, publish_many
from ..conf import settings
from ..exceptions import InvalidTaskOptions
from ..results.async_result import AsyncResult
from .options import NO_CALL_OPTIONS, CallOptions, call_or_declared
from .protocol import SIGNATURE_HEADER, EncodedMessage, TaskMessage, new_id, new_ids, signing_keys
from .registry import registry
from .routing import Route, resolve

if TYPE_CHECKING:
    from .task import Task


def send(name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Task | None = None) -> AsyncResult:
    """Validate, route, encode and publish one call; return its ``AsyncResult``."""
    conf = settings.as_dict()  # one read of the settings per call
    call = CallOptions.from_kwargs(f"{name}.apply_async()", **options)
    task = task or registry.get(name)
    if conf["ALWAYS_EAGER"] and task is not None:
        return task.apply(tuple(args or ()), dict(kwargs or {}), task_id=call.task_id, link=call.link,
                          link_error=call.link_error)
    route = _route(name, call, task)
    if call is NO_CALL_OPTIONS:  # a plain delay(): copy the task's last one when it can
        task_id = _send_copy(name, args, kwargs, task, conf, route)
        if task_id is not None:
            return AsyncResult(task_id, task_name=name)
    message = _message(name, args, kwargs, call, task, timezone.now())
    outgoing = _encode(message, call, task, conf)
    publish(outgoing.encoded, route, task_id=outgoing.task_id, deliver_at=outgoing.deliver_at)
    if call is NO_CALL_OPTIONS:
        _templates.keep(name, task, conf, message, outgoing)
    return AsyncResult(outgoing.task_id, task_name=name)


def _send_copy(name: str, args: Any, kwargs: Any, task: Task | None, conf: dict[str, Any], route: Route) -> str | None:
    """The fast path of a plain ``delay()``: publish the task's last plain message with a new id and these
    arguments (:meth:`~django_tasks_q.core.protocol.TaskMessage.sibling_encoder`), and return the new id;
    None when there is no template to copy or the arguments need the full path in ``send``. What it
    publishes is checked against the full path's message by tests/unit/test_fast_paths.py."""
    template = _templates.get(name, task, conf)
    if template is None:
        return None
    task_id = new_id()
    encoded = template.encoder(task_id, tuple(args or ()), dict(kwargs or {}))
    if encoded is None:  # arguments JSON cannot carry as is
        return None
    publish(encoded, route, task_id=task_id, like=template.encoded)
    return task_id


@dataclass(frozen=True)
class _Template:
    """A task's last plain ``delay()`` message, which the next ones copy (sibling_encoder)."""

    task: Any
    conf: dict[str, Any]
    encoded: EncodedMessage
    encoder: Callable[[str, tuple | list, dict], EncodedMessage | None]


class _Templates:
    """Per task, the message of a plain ``delay()`` (no options) to copy for the next ones.

    Such a call's headers depend only on the task and the settings -- unless
    the task declares ``expires`` in seconds (an absolute time per call) or
    messages are signed (a signature per message): those are always built in
    full. A change of settings (a new settings dict) or of the task object
    makes a new template.
    """

    def __init__(self) -> None:
        self._templates: dict[str, _Template] = {}

    def get(self, name: str, task: Task | None, conf: dict[str, Any]) -> _Template | None:
        template = self._templates.get(name)
        if template is None or template.task is not task or template.conf is not conf:
            return None
        return template

    def keep(self, name: str, task: Task | None, conf: dict[str, Any], message: TaskMessage,
             outgoing: Outgoing) -> None:
        encoder = _sibling_encoder(message, outgoing)
        if encoder is None or outgoing.deliver_at is not None or message.eta is not None or message.expires is not None:
            return
        if len(self._templates) >= 1024:
            self._templates.clear()
        self._templates[name] = _Template(task, conf, outgoing.encoded, encoder)


_templates = _Templates()


def send_many(name: str, calls: Iterable[tuple[Any, Any]], options: dict[str, Any],
              task: Task | None = None) -> list[AsyncResult]:
    """One task per ``(args, kwargs)`` in ``calls``, all with the same ``options``, in as few round trips
    as the broker allows (:func:`~django_tasks_q.broker.publisher.publish_many`)."""
    conf = settings.as_dict()
    call = CallOptions.from_kwargs(f"{name}.apply_async_many()", **options)
    if call.task_id is not None:
        raise InvalidTaskOptions(f"{name}.apply_async_many(): task_id names one task; each call gets its own id")
    task = task or registry.get(name)
    if conf["ALWAYS_EAGER"] and task is not None:
        return [task.apply(tuple(args or ()), dict(kwargs or {}), link=call.link, link_error=call.link_error)
                for args, kwargs in calls]
    route = _route(name, call, task)
    now = timezone.now()
    outgoing = _build_many(name, list(calls), call, task, conf, now)
    publish_many([(item.encoded, item.task_id, item.deliver_at) for item in outgoing], route,
                 shared_headers=not conf["SIGNING_KEY"])
    return [AsyncResult(item.task_id, task_name=name) for item in outgoing]


def _build_many(name: str, calls: list[tuple[Any, Any]], call: CallOptions, task: Task | None,
                conf: dict[str, Any], now: datetime) -> list[Outgoing]:
    """``_build`` for every call; after the first, a JSON message is copied with its id and arguments
    changed (:meth:`~django_tasks_q.core.protocol.TaskMessage.sibling_encoder`) instead of built anew."""
    if not calls:
        return []
    first_message = _message(name, calls[0][0], calls[0][1], call, task, now)
    first = _encode(first_message, call, task, conf)
    outgoing = [first]
    sibling = _sibling_encoder(first_message, first)
    for (args, kwargs), task_id in zip(calls[1:], new_ids(len(calls) - 1)):
        encoded = sibling(task_id, tuple(args or ()), dict(kwargs or {})) if sibling is not None else None
        if encoded is None:
            outgoing.append(_build(name, args, kwargs, call, task, conf, now))
        else:
            outgoing.append(Outgoing(task_id, encoded, first.deliver_at))
    return outgoing


def _sibling_encoder(message: TaskMessage, outgoing: "Outgoing") -> Callable[..., EncodedMessage | None] | None:
    """What copies ``outgoing`` for other ids and arguments; ``None`` for a message that cannot be copied
    (not JSON, or signed: a signature covers one id and one body)."""
    encoded = outgoing.encoded
    if encoded.content_type != "application/json" or SIGNATURE_HEADER in encoded.headers:
        return None
    return message.sibling_encoder(encoded)


@dataclass(frozen=True)
class Outgoing:
    task_id: str
    encoded: EncodedMessage
    deliver_at: float | None


def _route(name: str, call: CallOptions, task: Task | None) -> Route:
    opts = task.options if task is not None else None
    declared = {"queue": opts.queue, "routing_key": opts.routing_key, "priority": opts.priority} if opts else {}
    return resolve(name, call={"queue": call.queue, "routing_key": call.routing_key, "exchange": call.exchange,
                               "priority": call.priority}, task=declared)


def _build(name: str, args: Any, kwargs: Any, call: CallOptions, task: Task | None, conf: dict[str, Any],
           now: datetime) -> Outgoing:
    """The encoded message for one call (a new id unless the call names one)."""
    return _encode(_message(name, args, kwargs, call, task, now), call, task, conf)


def _message(name: str, args: Any, kwargs: Any, call: CallOptions, task: Task | None, now: datetime) -> TaskMessage:
    return call.to_message(name, args, kwargs, task.options if task is not None else None, now)


def _encode(message: TaskMessage, call: CallOptions, task: Task | None, conf: dict[str, Any]) -> Outgoing:
    opts = task.options if task is not None else None
    encoded = message.encode(call_or_declared(call.serializer, opts, "serializer", conf["TASK_SERIALIZER"]),
                             next(iter(signing_keys(conf["SIGNING_KEY"])), None))
    return Outgoing(message.id, encoded, deliver_at(message.eta, conf["ETA_HOLD_MAX"]))


def send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> AsyncResult:
    """Send a task by name without importing it (it may exist only on workers)."""
    return send(name, args, kwargs, options)
