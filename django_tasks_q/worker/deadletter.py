"""Copies of refused messages, kept in a dead-letter queue instead of dropped.

A message the worker refuses (see :mod:`.intake`) is rejected without
requeue. Just before that, the worker publishes a copy of it to the queue
named by ``DEAD_LETTER_QUEUE`` (default ``"tasksq.dead"``; ``None``
disables it): the original body bytes, content type, encoding and headers,
plus three headers saying why, from where and when it was refused. The copy
goes out on the very channel the message came in on, so it needs no second
connection and works the same on every broker -- RabbitMQ needs no policy,
Redis and ``django://`` have no dead-lettering of their own.

A copy never carries a signature: the signature header is removed (and
``x-tasks-q-signature-removed`` says it was there), so the dead-letter queue
is not a store of signed messages ready to replay. Re-sending a copy means
checking it and signing it anew
(:func:`~django_tasks_q.core.protocol.sign_headers`).

Nobody consumes the dead-letter queue: it is for people (and scripts) to
inspect, fix and re-send, or purge. A failed copy is logged and the message
is still rejected: a broken dead-letter queue must never stop a worker.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from kombu import Queue

from ..broker.queues import get_queue
from ..core.message_signing import SIGNATURE_HEADER

logger = logging.getLogger(__name__)

REFUSED_REASON = "x-tasks-q-refused-reason"
REFUSED_QUEUE = "x-tasks-q-refused-queue"
REFUSED_AT = "x-tasks-q-refused-at"
#: the original headers, when they were not a mapping (then the copy carries only ours)
REFUSED_HEADERS = "x-tasks-q-refused-headers"
#: a compressed body is copied as it was read, decompressed; this names the compression it had
DECOMPRESSED = "x-tasks-q-decompressed"
#: the original carried a signature, which the copy does not (it must not be replayable)
SIGNATURE_REMOVED = "x-tasks-q-signature-removed"
MAX_HEADER = 1000


def declare(channel: Any, name: str) -> Queue:
    """Declare the dead-letter queue (and its exchange and binding) on ``channel``."""
    queue = get_queue(name)(channel)
    queue.declare()
    return queue


def publish(channel: Any, name: str, kombu_message: Any, queue: str, reason: str) -> bool:
    """Copy ``kombu_message`` to the dead-letter queue ``name``; ``False`` (and a log line) if that failed."""
    try:
        dead = declare(channel, name)  # idempotent; the queue may have been deleted since the worker started
        headers = _headers(kombu_message, queue, reason)
        encoding = getattr(kombu_message, "content_encoding", None)
        message = channel.prepare_message(
            _raw_body(kombu_message.body, encoding), None, getattr(kombu_message, "content_type", None), encoding,
            headers, {"delivery_mode": 2},
        )
        channel.basic_publish(message, exchange=dead.exchange.name, routing_key=dead.routing_key)
    except Exception as exc:
        logger.error("could not copy refused message to dead-letter queue %r (%s: %s); rejecting it anyway",
                     name, type(exc).__name__, _short(str(exc)))
        return False
    return True


def _raw_body(body: Any, encoding: str | None) -> bytes:
    """The body as bytes again: some clients (py-amqp) hand text bodies over decoded."""
    if body is None:
        return b""
    if isinstance(body, str):
        try:
            return body.encode(encoding or "utf-8")
        except (LookupError, UnicodeError):
            return body.encode("utf-8")
    return bytes(body)


def _headers(kombu_message: Any, queue: str, reason: str) -> dict[str, Any]:
    original = getattr(kombu_message, "headers", None)
    if isinstance(original, dict):
        headers = dict(original)
    else:
        headers = {REFUSED_HEADERS: _short(repr(original))}
    if headers.pop(SIGNATURE_HEADER, None) is not None:
        headers[SIGNATURE_REMOVED] = True
    if headers.get("compression") and not getattr(kombu_message, "errors", None):
        headers[DECOMPRESSED] = headers.pop("compression")  # kombu already decompressed the body we hold
    headers.update({
        REFUSED_REASON: _short(reason),
        REFUSED_QUEUE: queue,
        REFUSED_AT: datetime.now(timezone.utc).isoformat(),
    })
    return headers


def _short(text: str, limit: int = MAX_HEADER) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
