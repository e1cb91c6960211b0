"""Delayed delivery: a task due far in the future waits in the broker, not in a worker.

A worker holds a ``countdown``/``eta`` task in memory only when it is due
within ``ETA_HOLD_MAX`` seconds. A farther one is *parked* in a durable
store of the broker, so that a task a week out is not held in any worker's
memory, is not redelivered by a visibility timeout while it waits, survives
every worker restarting, and is delivered once when its time comes:

* ``django://``: the row gets ``visible_at`` (the transport's ``_put`` reads
  the :data:`PARK_HEADER`); claims only look at rows without it (a partial
  index), and workers release due rows with one ``UPDATE``.
* ``redis://``: a sorted set :data:`REDIS_KEY` scored by due time, whose
  members are ``<list key>\\n<message>``; a Lua script moves due members to
  their lists. The ``ZREM`` inside the script decides which worker moves a
  member, so each is moved exactly once.
* ``amqp://``: RabbitMQ has no scheduled delivery. The topology of Celery's
  *native delayed delivery* (28 queues whose TTLs are 2^n seconds,
  dead-lettering from one to the next by the bits of the delay), under our
  own prefix, carries the message to the queue :data:`AMQP_READY_QUEUE`; any
  worker consumes it and republishes the message to the exchange and routing
  key it was sent to. The topology is declared here (:func:`declare_delay_topology`),
  not by kombu's helper, whose prefix argument only kombu 5.7 has; its names
  and arguments are kombu's with that prefix, so a broker declared by either
  accepts the other's declarations.

Parking is decided twice: by the sender (``delay(countdown=...)``) and by
the worker that receives a far-off task anyway (e.g. from a Celery client),
which parks a copy for its own queue and acks the original. Released
messages arrive up to :data:`RELEASE_LEAD` seconds early; the worker holds
those last seconds in memory and starts the task on time.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from typing import Any

from kombu import Exchange, Queue

logger = logging.getLogger(__name__)

#: Message header: epoch seconds before which the message must not be delivered.
PARK_HEADER = "x-tasks-q-deliver-at"
#: Headers of a message parked on RabbitMQ: where to republish it when it is due.
TARGET_EXCHANGE_HEADER = "x-tasks-q-exchange"
TARGET_ROUTING_KEY_HEADER = "x-tasks-q-routing-key"
#: Seconds before its time a parked message is released (the worker holds the rest).
RELEASE_LEAD = 2.0
#: Redis sorted set of parked messages.
REDIS_KEY = "tasksq.delayed"
#: RabbitMQ: prefix of the delay exchanges/queues, and the queue due messages reach.
AMQP_PREFIX = "tasksq"
AMQP_READY_QUEUE = "tasksq.delayed.ready"
#: RabbitMQ: bits of a delay, one delay queue each; the longest delay it expresses (~8.5 years), longer
#: ones are parked again.
MAX_NUMBER_OF_BITS_TO_USE = 28
AMQP_MAX_DELAY = 2**MAX_NUMBER_OF_BITS_TO_USE - 1
#: The delay words a routing key already starts with (a retry of a task delayed before): replaced, not
#: stacked, so that the key never outgrows AMQP's 255 bytes.
_DELAY_WORDS = re.compile(r"^(?:[01]\.){%d}" % MAX_NUMBER_OF_BITS_TO_USE)
#: Marker in a connection's declared set once the RabbitMQ topology exists.
AMQP_DECLARED = "\0tasksq.delayed"

_PARKING_DRIVERS = frozenset({"django", "redis", "amqp"})


def deliver_at(eta: datetime | None, hold_max: float, now: float | None = None) -> float | None:
    """The epoch time to park a message until, or ``None`` when it need not be parked."""
    if eta is None:
        return None
    at = eta.timestamp()
    return at if at - (time.time() if now is None else now) > hold_max else None


def supports_parking(connection: Any) -> bool:
    return connection.transport.driver_type in _PARKING_DRIVERS


def parks_by_header(connection: Any) -> bool:
    """Does this broker park a message that merely carries :data:`PARK_HEADER` (its transport's ``_put``
    reads it)? RabbitMQ needs another route (:func:`parked_route`)."""
    return supports_parking(connection) and not _is_amqp(connection)


def _is_amqp(connection: Any) -> bool:
    return connection.transport.driver_type == "amqp"


def level_name(level: int, prefix: str = AMQP_PREFIX) -> str:
    """The exchange and the queue that hold a message for ``2 ** level`` seconds (kombu's names)."""
    return f"{prefix}_celery_delayed_{level}" if prefix else f"celery_delayed_{level}"


def delivery_exchange_name(prefix: str = AMQP_PREFIX) -> str:
    """The exchange a message reaches once its delay has passed (kombu's name)."""
    return f"{prefix}_celery_delayed_delivery" if prefix else "celery_delayed_delivery"


def delay_routing_key(delay: int, routing_key: str) -> str:
    """The routing key that carries a message through the delay topology: the delay's bits, most
    significant first, one word each, then ``routing_key`` (``0.0. ... .1.0.1.videos`` for 5 s)."""
    if delay < 1 or not routing_key:
        raise ValueError(f"a delay needs at least one second and a routing key, got {delay!r}, {routing_key!r}")
    return ".".join(f"{delay:0{MAX_NUMBER_OF_BITS_TO_USE}b}") + "." + _DELAY_WORDS.sub("", routing_key, count=1)


def declare_delay_topology(connection: Any, prefix: str = AMQP_PREFIX) -> None:
    """Declare the delay exchanges and queues (idempotent), as Celery's native delayed delivery does.

    Level ``n`` is a topic exchange and a queue of the same name whose
    messages expire after ``2 ** n`` seconds into level ``n - 1`` (level 0:
    into the delivery exchange). A message enters at the top level and, at
    each level, waits in its queue when its bit ``n`` (word ``27 - n`` of the
    routing key) is 1 and passes straight to the next level's exchange when
    it is 0.
    """
    top = MAX_NUMBER_OF_BITS_TO_USE - 1
    with connection.channel() as channel:
        for level in range(top, -1, -1):
            name = level_name(level, prefix)
            expired_to = level_name(level - 1, prefix) if level else delivery_exchange_name(prefix)
            Exchange(name, type="topic").bind(channel).declare()
            queue = Queue(name, queue_arguments={
                "x-queue-type": "classic", "x-overflow": "reject-publish",
                "x-message-ttl": 2**level * 1000, "x-dead-letter-exchange": expired_to}).bind(channel)
            queue.declare()
            queue.bind_to(name, "*." * (top - level) + "1.#")
        for level in range(top, 0, -1):
            Exchange(level_name(level - 1, prefix), type="topic").bind(channel).bind_to(
                level_name(level, prefix), "*." * (top - level) + "0.#")
        delivery = Exchange(delivery_exchange_name(prefix), type="topic").bind(channel)
        delivery.declare()
        delivery.bind_to(level_name(0, prefix), "*." * top + "0.#")


def declare_amqp_topology(connection: Any) -> Queue:
    """Declare the delay exchanges and queues (idempotent) and the ready queue; return the ready queue."""
    declare_delay_topology(connection)
    delivery = Exchange(delivery_exchange_name(), type="topic")
    ready = Queue(AMQP_READY_QUEUE, exchange=delivery, routing_key="#", durable=True)
    ready.bind(connection.default_channel).declare()
    return ready


def parked_route(connection: Any, exchange: str, routing_key: str, headers: dict[str, Any], at: float,
                 declared: set[str]) -> tuple[str, str, dict[str, Any]]:
    """``(exchange, routing_key, headers)`` that park a message until ``at`` on this broker.

    ``declared`` is the caller's set of what this connection declared: the
    RabbitMQ topology is declared once per connection.
    """
    headers = {**headers, PARK_HEADER: at}
    if not _is_amqp(connection):
        return exchange, routing_key, headers  # the transport's _put parks it by the header
    if AMQP_DECLARED not in declared:
        declare_amqp_topology(connection)
        declared.add(AMQP_DECLARED)
    delay = min(AMQP_MAX_DELAY, max(1, int(at - time.time())))
    headers.update({TARGET_EXCHANGE_HEADER: exchange, TARGET_ROUTING_KEY_HEADER: routing_key})
    top = level_name(MAX_NUMBER_OF_BITS_TO_USE - 1)
    return top, delay_routing_key(delay, routing_key or "tasksq"), headers


def park_received(publisher: Any, message: Any, queue: str, at: float) -> None:
    """Park a copy of a received kombu ``message`` for ``queue`` only; the caller then acks the original.

    ``publisher`` is a :class:`~django_tasks_q.broker.connection.PublishState`:
    a connection of its own, so that waiting for a publisher confirm never
    runs the consumer's callbacks re-entrantly. The default exchange routes
    by queue name, so a fanout or topic message is not broadcast again.
    """
    exchange, routing_key, headers = parked_route(publisher.connection, "", queue, dict(message.headers or {}), at,
                                                  publisher.declared)
    _republish(publisher, message, exchange, routing_key, headers)


def forward_ready(publisher: Any, message: Any, hold_max: float) -> None:
    """RabbitMQ: a parked message reached the ready queue; send it where it was going (or park it again)."""
    headers = dict(message.headers or {})
    at = float(headers.get(PARK_HEADER) or 0)
    exchange = headers.pop(TARGET_EXCHANGE_HEADER, "") or ""
    routing_key = headers.pop(TARGET_ROUTING_KEY_HEADER, "") or ""
    if at - time.time() > max(hold_max, RELEASE_LEAD):  # longer than the topology can say: once more
        exchange, routing_key, headers = parked_route(publisher.connection, exchange, routing_key, headers, at,
                                                      publisher.declared)
    else:
        headers.pop(PARK_HEADER, None)
    _republish(publisher, message, exchange, routing_key, headers)


def _republish(publisher: Any, message: Any, exchange: str, routing_key: str, headers: dict[str, Any]) -> None:
    properties = message.properties or {}
    extra = {key: properties[key] for key in ("priority", "correlation_id", "reply_to") if properties.get(key)}
    publisher.producer.publish(message.body, exchange=exchange, routing_key=routing_key, headers=headers,
                               content_type=message.content_type, content_encoding=message.content_encoding,
                               delivery_mode=2, retry=True, retry_policy=publisher.retry_policy, **extra)
