"""From a raw broker message to a ``Job``, or a clear refusal.

Every refusal -- a body over ``MAX_MESSAGE_BYTES`` or more headers than
``MAX_HEADER_COUNT``, undecodable body, refused content type, bad
compression, headers or body that are not task protocol v2, NaN/Infinity in
a JSON body, a priority out of range, an ``eta`` more than ten years ahead,
missing, bad or stale signature, unknown task name -- is logged with the
task id as received (``<no id>`` when it has none) and the reason, copied to
the dead-letter queue (:mod:`.deadletter`) and rejected without requeue.
Nothing is executed and the worker goes on: :func:`read` never raises, since
an exception escaping into the consumer loop would leave the message unacked
to be delivered again, and again.

A refusal writes only what it can prove. With ``SIGNING_KEY`` set, the
signature is checked first (after the size limits, before anything is
decoded), and a message refused before its signature verified -- unsigned,
forged, stale, too big, undecodable before it could be checked -- is a log
line and a dead letter only: no result, no signal. A verified message (or
any message when signing is off) that is refused later is also sent as the
``task_rejected`` signal and, when it names a usable task id, recorded as
FAILURE with the reason, so a caller waiting on ``get()`` hears why instead
of hanging.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.transport import virtual

from .. import signals
from ..conf import settings
from ..core.message_signing import SIGNATURE_HEADER, verify
from ..core.protocol import MAX_NAME_LENGTH, TaskMessage, fast_loads, usable_id
from ..core.registry import registry
from ..core.signing import signing_keys
from ..core.states import TaskState
from ..exceptions import InvalidMessage, InvalidSignature, NotRegistered
from ..results.backend import describe_exception, get_backend
from . import deadletter
from .pools.base import Job

logger = logging.getLogger(__name__)

#: refusals whose reason is the whole story; anything else is logged with its traceback too
EXPECTED = (InvalidMessage, NotRegistered, ContentDisallowed, DecodeError)
_unverified_warned = False


class MessageTooLarge(InvalidMessage):
    """A message over ``MAX_MESSAGE_BYTES`` or ``MAX_HEADER_COUNT``: refused before anything reads it."""


@dataclass(frozen=True)
class Policy:
    """The settings intake needs, read once by the worker instead of once per message."""

    signing_keys: tuple[str | bytes, ...]  # the first signs; a message signed with any of them is accepted
    acks_late: bool
    dead_letter_queue: str | None = None
    signing_max_age: float | None = 7 * 86400  # seconds; None: signed messages never go stale
    signing_accept_legacy: bool = False  # also take the old signature (id and body only), for a rolling upgrade
    max_message_bytes: int | None = 32 * 1024 * 1024
    max_header_count: int | None = 1000

    @classmethod
    def from_settings(cls) -> "Policy":
        return cls(signing_keys=signing_keys(settings.SIGNING_KEY), acks_late=settings.ACKS_LATE,
                   dead_letter_queue=settings.DEAD_LETTER_QUEUE, signing_max_age=settings.SIGNING_MAX_AGE,
                   signing_accept_legacy=settings.SIGNING_ACCEPT_LEGACY,
                   max_message_bytes=settings.MAX_MESSAGE_BYTES, max_header_count=settings.MAX_HEADER_COUNT)


def read(kombu_message: Any, queue: str, policy: Policy | None = None) -> Job | None:
    """Decode and check one message; ``None`` means it was refused (and already rejected)."""
    policy = policy or Policy.from_settings()
    verified = not policy.signing_keys
    try:
        _check_limits(kombu_message, policy)
        headers = kombu_message.headers
        if policy.signing_keys:
            verify(policy.signing_keys, headers if isinstance(headers, dict) else {}, kombu_message.body,
                   kombu_message.content_type, kombu_message.content_encoding, max_age=policy.signing_max_age,
                   accept_legacy=policy.signing_accept_legacy)
            verified = True
        elif isinstance(headers, dict) and SIGNATURE_HEADER in headers:
            _warn_unverified(headers)
        return _read(kombu_message, queue, policy)
    except Exception as exc:  # whatever is wrong with it, the message is refused, never raised into the loop
        refuse(kombu_message, exc, queue, policy, verified=verified)
        return None


def undecodable(queue: str, policy: Policy, kombu_message: Any, exc: BaseException) -> None:
    """kombu's ``on_decode_error``: the message could not even be built (bad compression, headers).

    Its signature covers the body as sent (uncompressed), which is not at
    hand: with signing on, such a message is unverified and writes nothing.
    """
    refuse(kombu_message, exc, queue, policy, verified=not policy.signing_keys)


def _check_limits(kombu_message: Any, policy: Policy) -> None:
    """Refuse a body over ``MAX_MESSAGE_BYTES`` or more headers than ``MAX_HEADER_COUNT``, before reading them.

    The size is of the body as the client hands it over (decompressed; for a
    client that hands over text, in characters).
    """
    body, headers = kombu_message.body, kombu_message.headers
    size = len(body) if isinstance(body, (bytes, bytearray, memoryview, str)) else 0
    if policy.max_message_bytes is not None and size > policy.max_message_bytes:
        raise MessageTooLarge(f"body of {size} bytes is over MAX_MESSAGE_BYTES ({policy.max_message_bytes})")
    if policy.max_header_count is not None and isinstance(headers, dict) and len(headers) > policy.max_header_count:
        raise MessageTooLarge(f"{len(headers)} headers are over MAX_HEADER_COUNT ({policy.max_header_count})")


def _read(kombu_message: Any, queue: str, policy: Policy) -> Job:
    headers = kombu_message.headers
    body = _decode(kombu_message)
    if kombu_message.content_type == "application/json":
        _refuse_non_finite(kombu_message.body, body)
    message = TaskMessage.from_wire(headers, body)
    task = registry[message.task]
    priority = kombu_message.properties.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 0 <= priority <= 255):
        raise InvalidMessage(f"task {message.task} [{message.id}]: message priority must be an integer "
                             f"from 0 to 255, got {priority!r}")
    info = kombu_message.delivery_info or {}
    delivery_info = {
        "exchange": info.get("exchange"),
        "routing_key": info.get("routing_key"),
        "queue": queue,
        "priority": priority,
        "redelivered": bool(info.get("redelivered")),
    }
    acks_late = task.options.acks_late if task.options.acks_late is not None else policy.acks_late
    return Job(message=message, delivery_info=delivery_info, acks_late=acks_late, kombu_message=kombu_message)


def _decode(kombu_message: Any) -> Any:
    """The body, as kombu's ``decode()`` gives it; a UTF-8 JSON body that the consumer accepts is read
    by :func:`~django_tasks_q.core.protocol.fast_loads` instead of through kombu's serializer registry."""
    accept = kombu_message.accept
    if (kombu_message.content_type != "application/json" or kombu_message.content_encoding != "utf-8"
            or (accept is not None and "application/json" not in accept) or not kombu_message.body):
        return kombu_message.decode()
    try:
        return fast_loads(kombu_message.body)
    except (ValueError, RecursionError) as exc:  # what kombu's decode() raises for a body that is not JSON
        raise DecodeError(exc) from exc


def _refuse_non_finite(raw: Any, body: Any) -> None:
    """JSON has no NaN or Infinity (RFC 8259), and results holding them cannot be stored: refuse them.

    Python's parser accepts the tokens, so the decoded body is searched --
    only when the raw text contains one, so ordinary bodies cost one scan.
    """
    if isinstance(raw, bytes):
        suspect = b"NaN" in raw or b"Infinity" in raw
    else:
        suspect = isinstance(raw, str) and ("NaN" in raw or "Infinity" in raw)
    if not suspect:
        return
    stack = [body]
    while stack:  # no recursion: the body may be nested as deep as the parser allowed
        value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidMessage(f"the JSON body holds {value!r}, which JSON does not allow (RFC 8259)")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)


def _warn_unverified(headers: dict) -> None:
    """A signed message reaching a worker without SIGNING_KEY runs unverified (so signing can roll out sender-first)."""
    global _unverified_warned
    if not _unverified_warned:
        _unverified_warned = True
        logger.warning("message %s carries a signature, but SIGNING_KEY is not set here: signatures are not "
                       "checked (logged once)", _label(headers.get("id"), "<no id>"))


def refuse(kombu_message: Any, exc: BaseException, queue: str | None = None, policy: Policy | None = None,
           verified: bool | None = None) -> None:
    """Log, copy to the dead-letter queue and reject; if ``verified`` (by default: when signing is off), also
    signal and record FAILURE (when it has an id). Never raises."""
    try:
        policy = policy or Policy.from_settings()
        _refuse(kombu_message, exc, queue, policy, not policy.signing_keys if verified is None else verified)
    except Exception:  # the last line of defence: a refusal must not take the worker down
        logger.exception("error while refusing a message")
        _reject(kombu_message, None)


def _refuse(kombu_message: Any, exc: BaseException, queue: str | None, policy: Policy, verified: bool) -> None:
    headers = getattr(kombu_message, "headers", None)
    headers = headers if isinstance(headers, dict) else {}
    name, task_id = headers.get("task"), headers.get("id")
    reason = f"{type(exc).__name__}: {exc}"
    logger.error("refused message %s[%s] from queue %s (content type %s)%s: %s",
                 _label(name, "<no task name>"), _label(task_id, "<no id>"), queue,
                 _label(getattr(kombu_message, "content_type", None), "none"),
                 "" if verified else " before its signature was verified", deadletter._short(reason),
                 exc_info=None if isinstance(exc, EXPECTED) else exc)
    if verified:  # nothing of an unverified message reaches receivers
        if isinstance(exc, NotRegistered):
            signals.send(signals.task_unknown, sender=None, name=name, id=task_id, message=kombu_message, exc=exc)
        signals.send(signals.task_rejected, sender=name if isinstance(name, str) else None, message=kombu_message,
                     reason=exc)
    dead = policy.dead_letter_queue
    channel = getattr(kombu_message, "channel", None)
    if dead and queue != dead and channel is not None:
        deadletter.publish(channel, dead, kombu_message, queue or "", reason)
    if verified and usable_id(task_id) and not isinstance(exc, InvalidSignature):
        try:
            get_backend().mark(task_id, TaskState.FAILURE, result=describe_exception(exc),
                               task_name=name[:MAX_NAME_LENGTH] if isinstance(name, str) else "")
        except Exception:
            logger.exception("could not record the refusal of %s", task_id)
    _reject(kombu_message, task_id)


def _reject(kombu_message: Any, task_id: Any) -> None:
    try:
        if not getattr(kombu_message, "acknowledged", True):
            kombu_message.reject(requeue=False)
    except Exception:
        logger.exception("could not reject message %s", _label(task_id, "<no id>"))


def _label(value: Any, missing: str) -> str:
    """A header value fit for one log line: as is when printable and short, else its shortened repr."""
    if value is None or value == "":
        return missing
    if isinstance(value, str) and len(value) <= 200 and value.isprintable():
        return value
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"


def guard_channel(channel: Any) -> None:
    """Make a kombu virtual channel (Redis, ``django://``) build a refusable message from any payload.

    kombu builds the message object in the transport's delivery callback,
    before our consumer sees it; a payload whose headers are not a mapping
    makes that constructor raise there, and the message is lost (Redis) or
    comes back for ever (``django://``). The guarded class keeps such a
    message, marked with the error, so kombu hands it to ``on_decode_error``
    and it is refused like any other. AMQP messages always have mapping
    headers, so AMQP channels are left alone.
    """
    if isinstance(channel, virtual.Channel) and not getattr(channel.Message, "_tasks_q_guarded", False):
        channel.Message = _guarded(channel.Message)


def _guarded(message_class: Any) -> Any:
    class GuardedMessage(message_class):
        _tasks_q_guarded = True

        def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
            headers = payload.get("headers") if isinstance(payload, dict) else None
            if headers is None or isinstance(headers, dict):
                super().__init__(payload, channel=channel, **kwargs)
                return
            super().__init__({**payload, "headers": None}, channel=channel, **kwargs)
            self._raw = payload  # kombu re-publishes _raw on restore: keep the message as it came
            self.headers = headers
            try:
                raise InvalidMessage(f"message headers must be a mapping, got {type(headers).__name__}")
            except InvalidMessage:
                self.errors.append(sys.exc_info())

    GuardedMessage.__name__ = GuardedMessage.__qualname__ = f"Guarded{message_class.__name__}"
    return GuardedMessage
