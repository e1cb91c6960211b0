"""``django://`` -- a kombu transport that keeps messages in the project's database.

Zero servers: each message is a row of
:class:`~django_tasks_q.models.BrokerMessage` in a database Django already
uses (SQLite for a fresh checkout, PostgreSQL in production).

Connection string
=================
::

    django://

Transport options (``Connection("django://", transport_options={...})``):

* ``database`` -- the Django database alias (default ``"default"``).
* ``visibility_timeout`` -- seconds a claimed message stays reserved for its
  consumer (default 60). A keeper thread in the consumer's process extends
  the deadline of every message it holds unacked, every third of this, so a
  long ``acks_late`` task keeps its message however long it runs; a dead
  consumer's messages are delivered again once the deadline passes.
* ``polling_interval`` -- the longest sleep between polls of idle queues, in
  seconds (default 1). Polling starts at 5 ms, doubles while the queues stay
  empty and drops back to 5 ms after a delivery or an ack.
* ``binding_cache_ttl`` -- seconds a channel reuses the bindings it read
  for an exchange (default 1.0; 0: read them on every publish).
* ``deadletter_queue`` -- where a message no binding matches goes; unset (the
  default), such a publish raises ``Unroutable``.
* ``body_encoding`` -- as for every kombu virtual transport (``base64``).

Features
========
* Type: virtual, synchronous (Celery uses its polling loop).
* Exchanges: direct, topic and fanout, with AMQP's topic matching (``#`` is
  zero or more words). Bindings are rows of
  :class:`~django_tasks_q.models.BrokerBinding`, so every process routes by
  the bindings any process declared: a worker's ``videos`` bound to
  ``media.video.#`` receives what a web process publishes to ``media`` with
  ``media.video.hd``. Publishers cache them for ``binding_cache_ttl``
  seconds. A publish that matches no queue raises
  :class:`~django_tasks_q.broker.transport.django_bindings.Unroutable`
  instead of dropping the message. Details and decisions:
  :mod:`django_tasks_q.broker.transport.django_bindings`.
* Priority: the ``priority`` message property, 0-255, higher first; FIFO
  within a priority.
* Claims: in batches of what the prefetch window has room for, one
  statement each (``UPDATE ... RETURNING`` over rows taken ``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL); see
  :mod:`django_tasks_q.broker.transport.django_claims`. One message goes to
  one consumer.
* Bulk sends: :meth:`Channel.put_messages` inserts a batch with multi-row
  ``INSERT`` statements.
* Transactions: a publish inside the caller's ``transaction.atomic()`` is an
  INSERT in that transaction. Consumers see the message only once it
  commits, and a rollback sends nothing -- so a task about a row being
  created needs no ``on_commit``.

Delivery guarantee
==================
At least once. Ack deletes the row; reject deletes it, or with ``requeue``
clears the claim; ``recover`` and closing a channel with unacked messages
clear their claims too. A message keeps its place in the queue and is never
copied. A message whose claim expired (its consumer died) is delivered again
with ``delivery_info["redelivered"]`` set, as is any message claimed before.
Deadlines are extended by a thread, so a consumer blocked in a long task
keeps its claims; only a process that stops running (killed, or frozen for
longer than ``visibility_timeout``) loses them. Deadlines use the hosts' clocks, which must agree to well
within the timeout.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from queue import Empty
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import django
from django.apps import apps
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db.models import QuerySet
from django.utils import timezone
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.utils.json import dumps
from kombu.utils.uuid import uuid

from ..delayed import PARK_HEADER, RELEASE_LEAD
from .django_bindings import BindingsMixin, ExchangeTypeMismatch, Unroutable
from .django_claims import ClaimsMixin, unclaimed
from .keeper import KeeperMixin, held_tags

if TYPE_CHECKING:
    from ...models import BrokerMessage

__all__ = ["Channel", "ExchangeTypeMismatch", "Transport", "Unroutable", "register"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEME = "django"
TRANSPORT_PATH = "django_tasks_q.broker.transport.django:Transport"

#: Seconds between two warnings about database errors (the ones between are logged at DEBUG).
WARN_EVERY = 5.0
#: Delivery tags per UPDATE when extending claims (SQLite's parameter limit).
EXTEND_CHUNK = 500


def register() -> None:
    """Teach kombu the ``django://`` scheme. Idempotent."""
    TRANSPORT_ALIASES[SCHEME] = TRANSPORT_PATH


def _parked_until(message: dict[str, Any]) -> datetime | None:
    """The ``visible_at`` of a message the sender parked (delayed delivery), else ``None``."""
    headers = message.get("headers")
    at = headers.get(PARK_HEADER) if isinstance(headers, dict) else None
    if at is None:
        return None
    when = datetime.fromtimestamp(float(at), tz=dt_timezone.utc)
    return when if when > timezone.now() + timedelta(seconds=RELEASE_LEAD) else None


class Channel(ClaimsMixin, BindingsMixin, virtual.Channel):  # type: ignore[misc, unused-ignore]  # kombu types deadletter_queue as None
    """A virtual channel whose queues are rows of ``BrokerMessage``, bound by rows of ``BrokerBinding``."""

    from_transport_options = (  # type: ignore[assignment, unused-ignore]  # kombu infers a fixed-length tuple
        *virtual.Channel.from_transport_options, "database", "visibility_timeout", "binding_cache_ttl"
    )
    database: str = "default"
    visibility_timeout: float = 60.0
    max_priority = 255

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.visibility_timeout = float(self.visibility_timeout)
        if self.visibility_timeout <= 0:
            raise ValueError(f"django:// visibility_timeout must be positive, got {self.visibility_timeout!r}")
        self.model: type[BrokerMessage] = apps.get_model("django_tasks_q", "BrokerMessage")
        self._no_ack_consumers: dict[str, str] = {}  # consumer tag -> queue
        self._init_claims()
        self._last_warning = -WARN_EVERY

    @property
    def extension_interval(self) -> float:
        """Seconds between extensions of the claims this channel holds."""
        return self.visibility_timeout / 3

    @property
    def _rows(self) -> QuerySet[BrokerMessage]:
        return self.model.objects.using(self.database)

    # -- kombu's storage interface --------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        # One tag per row: a message routed to two queues is two rows, acked apart.
        self._retrying(self._row(queue, message, uuid()).save, using=self.database, force_insert=True)

    def _row(self, queue: str, message: dict[str, Any], tag: str) -> BrokerMessage:
        """The unsaved row that holds ``message`` in ``queue`` under delivery tag ``tag``."""
        if message["properties"].get("delivery_tag") != tag:
            message = {**message, "properties": {**message["properties"], "delivery_tag": tag}}
        return self.model(queue=queue, payload=dumps(message), priority=self._get_message_priority(message),
                          delivery_tag=tag, visible_at=_parked_until(message))

    def release_parked(self) -> int:
        """Make parked rows due within ``RELEASE_LEAD`` seconds deliverable; the number released."""
        soon = timezone.now() + timedelta(seconds=RELEASE_LEAD)
        return self._retrying(self._rows.filter(visible_at__lte=soon).update, visible_at=None)

    def put_messages(self, exchange: str, routing_key: str, messages: list[dict[str, Any]]) -> int:
        """Insert kombu-format ``messages`` as ``basic_publish`` would, with one multi-row ``INSERT`` (per
        batch the database allows) instead of one per message: the project's bulk sends call this.

        All of them or none are inserted (in the caller's transaction, if any). Returns how many queues
        each message went to; a route no binding matches raises ``Unroutable``, as a publish does.
        """
        queues = self._lookup(exchange, routing_key)
        rows = [self._row(queue, message, message["properties"]["delivery_tag"] if len(queues) == 1 else uuid())
                for message in messages for queue in queues]
        self._retrying(self._rows.bulk_create, rows)
        return len(queues)

    def _get_and_deliver(self, queue: str, callback: Callable[[dict[str, Any], str], None]) -> None:
        try:
            message = self._get(queue)
        except DatabaseError as exc:  # the poller must survive; try again next poll
            self._recover(exc)
            raise Empty() from exc
        if queue in self._no_ack_consumers.values():
            self._retrying(self._delete_message, message["properties"]["delivery_tag"])
        else:
            self.connection.keep_claims()
        callback(message, queue)

    def _restore(self, message: virtual.Message) -> None:
        """Give an unacked message back: clear its claim. Never inserts a copy."""
        tag = message.delivery_tag
        try:
            self._retrying(self._rows.filter(delivery_tag=tag).update, reserved_until=None)
        except DatabaseError as exc:
            logger.warning("django:// could not restore %s (%s); it returns when its claim expires", tag, exc)

    def _size(self, queue: str) -> int:
        """Messages ready for a consumer (parked ones are not counted until released)."""
        return self._rows.filter(unclaimed(timezone.now()), visible_at__isnull=True, queue=queue).count()

    def _purge(self, queue: str) -> int:
        """Delete the waiting messages of ``queue``; claimed ones stay with their consumers."""
        deleted, _ = self._rows.filter(unclaimed(timezone.now()), queue=queue).delete()
        return deleted

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._rows.filter(queue=queue).delete()
        if self.connection is not None:
            self.connection.declared_queues.discard(queue)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.connection.declared_queues.add(queue)  # rows need no table per queue

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return (queue in self.connection.declared_queues or self._rows.filter(queue=queue).exists()
                or self._bindings.filter(queue=queue).exists())  # declared by another process

    # -- AMQP methods whose virtual defaults would lose or copy a row ---------------

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> None:
        # The default deletes once per binding, so an unbound queue would keep its rows.
        if if_empty and self._size(queue):
            return
        self._delete(queue)
        self._unbind_queue(queue)

    def basic_consume(self, queue: str, no_ack: bool, callback: Callable, consumer_tag: str, **kwargs: Any) -> None:
        if no_ack:
            self._no_ack_consumers[consumer_tag] = queue
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> None:
        self._no_ack_consumers.pop(consumer_tag, None)
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        self._release_if_unconsumed(queue)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> virtual.Message | None:
        try:
            message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        except DatabaseError as exc:
            self._recover(exc)
            raise
        if message is not None and no_ack:
            self._retrying(self._delete_message, message.delivery_tag)
        return message

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        self._retrying(self._delete_message, delivery_tag)
        super().basic_ack(delivery_tag, multiple)
        self._wake()

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not requeue:
            self._retrying(self._delete_message, delivery_tag)
        super().basic_reject(delivery_tag, requeue=requeue)  # requeue: QoS calls _restore
        self._wake()

    # -- claims held by this channel ---------------------------------------------------

    def extend_reservations(self) -> None:
        """Push back the deadline of every message this channel holds unacked (called by the keeper)."""
        held = held_tags(self._qos) + self._claimed_tags()
        if not held:
            return
        deadline = timezone.now() + timedelta(seconds=self.visibility_timeout)
        for start in range(0, len(held), EXTEND_CHUNK):
            chunk = held[start : start + EXTEND_CHUNK]
            self._rows.filter(delivery_tag__in=chunk, reserved_until__isnull=False).update(reserved_until=deadline)
        logger.debug("django:// extended %d claim(s) to %s", len(held), deadline)

    # -- database hygiene ----------------------------------------------------------------

    def _retrying(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one statement; if the connection went away, reconnect and retry once.

        Inside the caller's transaction there is nothing to retry: the error
        is the caller's.
        """
        try:
            return fn(*args, **kwargs)
        except (InterfaceError, OperationalError) as exc:
            if connections[self.database].in_atomic_block:
                raise
            self._recover(exc)
            return fn(*args, **kwargs)

    def _recover(self, exc: BaseException) -> None:
        """Log a database error and drop the connection if it is no longer usable."""
        now = monotonic()
        if now - self._last_warning >= WARN_EVERY:  # an outage is one line every few seconds, not one per poll
            self._last_warning = now
            logger.warning("django:// database %r error: %s; retrying", self.database, exc)
        else:
            logger.debug("django:// database %r error: %s; retrying", self.database, exc)
        connection = connections[self.database]
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()

    def _wake(self) -> None:
        if self.connection is not None:
            self.connection.wake()


class Transport(KeeperMixin, virtual.Transport):  # type: ignore[misc, unused-ignore]  # kombu types channels as None
    """The ``django://`` transport: polls with backoff and keeps claims alive."""

    Channel = Channel
    driver_type = driver_name = "django"
    keeper_name = "django-transport-keeper"
    #: First sleep of an idle poller; it doubles up to ``polling_interval``.
    min_polling_interval = 0.005
    connection_errors = (  # type: ignore[assignment, unused-ignore]  # kombu infers a one-item tuple
        *virtual.Transport.connection_errors, InterfaceError, OperationalError)
    channel_errors = (  # type: ignore[assignment, unused-ignore]  # kombu infers a one-item tuple
        *virtual.Transport.channel_errors, DatabaseError)
    # kombu's ensure() (publish with retry) reconnects and retries on these only; an
    # Unroutable or ExchangeTypeMismatch is raised at once, as py-amqp's channel errors are.
    recoverable_connection_errors = connection_errors
    recoverable_channel_errors = ()
    implements = virtual.Transport.implements.extend(exchange_type=frozenset(["direct", "topic", "fanout"]))

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.declared_queues: set[str] = set()
        self._wakeup = threading.Event()
        self._delay = self.min_polling_interval

    def driver_version(self) -> str:
        return django.get_version()

    def wake(self) -> None:
        """Cut the current idle sleep short (an ack freed prefetch capacity)."""
        self._wakeup.set()

    def drain_events(  # type: ignore[override, unused-ignore]  # as kombu's virtual.Transport does
            self, connection: Any, timeout: float | None = None) -> None:
        """Deliver one message; while every queue is empty sleep, backing off.

        Raises ``socket.timeout`` once ``timeout`` seconds pass without a message.
        """
        start = monotonic()
        while True:
            try:
                self.cycle.get(  # type: ignore[attr-defined, unused-ignore]  # kombu types cycle as None
                    self._deliver, timeout=timeout)
            except Empty:
                pass
            else:
                self._delay = self.min_polling_interval
                return
            remaining = math.inf if timeout is None else timeout - (monotonic() - start)
            if remaining <= 0:
                raise socket.timeout()
            if self._wakeup.wait(min(self._delay, remaining)):
                self._wakeup.clear()
                self._delay = self.min_polling_interval
            else:
                self._delay = min(self._delay * 2, self.polling_interval or self.min_polling_interval)

    # -- the keeper (KeeperMixin) runs channel.extend_reservations() in a thread -----------

    def on_keeper_error(self, channel: Any, exc: BaseException) -> None:
        if isinstance(exc, DatabaseError):
            channel._recover(exc)
        else:
            super().on_keeper_error(channel, exc)

    def on_keeper_exit(self) -> None:
        connections.close_all()  # the keeper thread's own connections
