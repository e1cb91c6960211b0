"""Exchanges and bindings of ``django://`` that every process sees.

kombu's virtual transports keep exchanges and bindings in the memory of the
process that declared them: a worker binding queue ``videos`` to the topic
exchange ``media`` with ``media.video.#`` routes nothing for a web process
that publishes to ``media`` without declaring that binding itself, and kombu
drops the message (or files it in its dead-letter queue). The
:class:`BindingsMixin` of the ``django://`` channel keeps each binding as a
:class:`~django_tasks_q.models.BrokerBinding` row as well:

* ``queue_bind`` writes the row (``get_or_create``: one row however many
  processes declare it, concurrent declarations included); ``queue_unbind``,
  ``queue_delete`` and ``exchange_delete`` delete rows.
* An exchange has one type, stored on its binding rows. Declaring it, or
  binding to it, as another type raises :class:`ExchangeTypeMismatch`
  (AMQP's PRECONDITION_FAILED), whichever process made the bindings. An
  exchange that has no bindings has no stored type.
* A publish routes by the rows of its exchange together with this process's
  own bindings: direct by equal key, topic as AMQP matches (``*`` one word,
  ``#`` zero or more: :mod:`django_tasks_q.broker.topic`), fanout to every
  bound queue. The rows are cached per channel for ``binding_cache_ttl``
  seconds (transport option, default 1.0; 0 reads them on every publish).
  A bind or unbind on the channel drops its cache, and the process's own
  bindings count at once anyway; another process's new binding is seen
  within the TTL.
* A message routed to several queues is a row per queue, inserted in one
  transaction: every queue gets its copy or none does.
* Unroutable -- no bound queue matches: AMQP drops such a message unless it
  is published ``mandatory``, and kombu drops it or files it in the queue
  named by the ``deadletter_queue`` transport option. Here a message is never
  lost silently: the publish logs a WARNING and raises :class:`Unroutable`,
  naming exchange and routing key, and inserts nothing -- unless
  ``deadletter_queue`` is set, when the message goes there (also with the
  WARNING). The project's publishing path declares its queue, and so the
  queue's binding, before it publishes; only custom exchanges meet this.

Bindings last until unbound, or until their queue or exchange is deleted:
``auto_delete`` and ``x-expires`` are not enforced, so the queue of a
consumer that is gone keeps its bindings -- and collects fanout copies --
until someone deletes it. A binding declared inside a transaction that is
rolled back is gone from the table but not from the declaring process, which
keeps routing by it; other processes see it once it is declared again.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any, Callable

from amqp.exceptions import PreconditionFailed
from django.apps import apps
from django.db import transaction
from django.db.models import QuerySet
from kombu.exceptions import ChannelError
from kombu.transport import virtual
from kombu.transport.virtual.base import NotEquivalentError

from ..topic import TopicExchange

__all__ = ["BindingsMixin", "ExchangeTypeMismatch", "Unroutable"]

logger = logging.getLogger(__name__)

#: (binding key, pattern, queue): the shape of kombu's exchange tables.
Binding = tuple[str, Any, str]


class ExchangeTypeMismatch(PreconditionFailed, NotEquivalentError):
    """An exchange was declared, or bound to, as another type than it has."""

    def __init__(self, exchange: str, existing: str, declared: str) -> None:
        self.exchange, self.existing, self.declared = exchange, existing, declared
        super().__init__(f"PRECONDITION_FAILED - exchange {exchange!r} exists as {existing}, declared as {declared}")


class Unroutable(ChannelError):
    """No queue bound to the exchange matches the routing key; nothing was sent."""

    code = 312  # AMQP's NO_ROUTE

    def __init__(self, exchange: str, routing_key: str, exchange_type: str | None) -> None:
        self.exchange, self.routing_key = exchange, routing_key
        kind = exchange_type or "nothing is bound to it"
        super().__init__(f"NO_ROUTE - no queue bound to exchange {exchange!r} ({kind}) with key {routing_key!r}; "
                         f"the message was not sent")


def _not_found(exchange: str, method: str) -> ChannelError:
    return ChannelError(f"NOT_FOUND - no exchange {exchange!r}", None, method, 404)


class BindingsMixin:
    """The exchange and binding methods of the ``django://`` channel (see the module docstring)."""

    binding_cache_ttl: float = 1.0
    supports_fanout = True
    #: classes here; kombu's ``Channel.__init__`` replaces them with instances
    exchange_types: dict[str, Any] = {**virtual.Channel.exchange_types, "topic": TopicExchange}  # AMQP's # and *

    # Provided by the channel.
    database: str
    state: Any
    deadletter_queue: str | None
    _retrying: Callable[..., Any]
    _put: Callable[..., None]
    _new_queue: Callable[..., None]
    _inplace_augment_message: Callable[..., None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.binding_cache_ttl = float(self.binding_cache_ttl)
        self.binding_model = apps.get_model("django_tasks_q", "BrokerBinding")
        #: exchange -> (expires at, stored type, {(binding key, queue)})
        self._binding_cache: dict[str, tuple[float, str | None, frozenset[tuple[str, str]]]] = {}

    @property
    def _bindings(self) -> QuerySet:
        return self.binding_model.objects.using(self.database)

    # -- declarations --------------------------------------------------------------------

    def exchange_declare(self, exchange: str | None = None, type: str = "direct", durable: bool = False,
                         auto_delete: bool = False, arguments: dict | None = None, nowait: bool = False,
                         passive: bool = False) -> None:
        type = type or "direct"
        exchange = exchange or f"amq.{type}"
        if passive:
            if exchange not in self.state.exchanges and self._stored_type(exchange) is None:
                raise _not_found(exchange, "Exchange.declare")
            return
        if type not in self.exchange_types:
            raise ChannelError(f"COMMAND_INVALID - exchange type {type!r} is not one of django://'s "
                               f"{sorted(self.exchange_types)}", None, "Exchange.declare", 503)
        local = self.state.exchanges.get(exchange)
        existing = local["type"] if local is not None and local["type"] != type else self._stored_type(exchange, type)
        if existing is not None:
            raise ExchangeTypeMismatch(exchange, existing, type)
        super().exchange_declare(  # type: ignore[misc]  # mixin: virtual.Channel provides it
            exchange, type, durable, auto_delete, arguments, nowait, passive)

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        """Delete ``exchange`` and its bindings; its queues and their messages stay (AMQP)."""
        rows = self._bindings.filter(exchange=exchange)
        local = self.state.exchanges.get(exchange, {}).get("table", [])
        if if_unused and (local or self._retrying(rows.exists)):
            raise PreconditionFailed(f"PRECONDITION_FAILED - exchange {exchange!r} in use")
        self._retrying(rows.delete)
        for routing_key, _, queue in local:
            self.state.binding_delete(queue, exchange, routing_key)
        self.state.exchanges.pop(exchange, None)
        self._binding_cache.clear()

    def queue_bind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                   arguments: dict | None = None, **kwargs: Any) -> None:
        exchange = exchange or "amq.direct"
        routing_key = routing_key or ""
        type = self._type_to_bind(exchange)
        self._store_binding(exchange, type, routing_key, queue)
        if not self.state.has_binding(queue, exchange, routing_key):  # kombu's record of this process's bindings
            self.state.binding_declare(queue, exchange, routing_key, arguments)
            if exchange in self.state.exchanges:
                meta = self.exchange_types[type].prepare_bind(queue, exchange, routing_key, arguments)
                self.state.exchanges[exchange].setdefault("table", []).append(meta)
        self._binding_cache.clear()

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                     arguments: dict | None = None, **kwargs: Any) -> None:
        exchange = exchange or "amq.direct"
        routing_key = routing_key or ""
        self._retrying(self._bindings.filter(exchange=exchange, routing_key=routing_key, queue=queue).delete)
        self.state.binding_delete(queue, exchange, routing_key)
        table = self.state.exchanges.get(exchange, {}).get("table")
        if table:
            table[:] = [meta for meta in table if (meta[0], meta[2]) != (routing_key, queue)]
        self._binding_cache.clear()

    def _unbind_queue(self, queue: str) -> None:
        """Drop every binding of ``queue`` (it is being deleted)."""
        self._retrying(self._bindings.filter(queue=queue).delete)
        self.state.queue_bindings_delete(queue)
        for declared in self.state.exchanges.values():
            table = declared.get("table")
            if table:
                table[:] = [meta for meta in table if meta[2] != queue]
        self._binding_cache.clear()

    def list_bindings(self):
        """(queue, exchange, binding key) of every binding, whichever process made it."""
        stored = set(self._retrying(lambda: list(self._bindings.values_list("queue", "exchange", "routing_key"))))
        return iter(sorted(stored | set(super().list_bindings())))

    def _type_to_bind(self, exchange: str) -> str:
        declared = self.state.exchanges.get(exchange)
        if declared is not None:
            return declared["type"]
        stored = self._stored_type(exchange)
        if stored is not None:
            return stored
        prefix, _, predeclared = exchange.partition(".")  # AMQP's amq.direct, amq.topic, amq.fanout
        if prefix == "amq" and predeclared in self.exchange_types:
            return predeclared
        raise _not_found(exchange, "Queue.bind")

    def _stored_type(self, exchange: str, other_than: str | None = None) -> str | None:
        """The type stored on ``exchange``'s bindings (only one other than ``other_than``), or None."""
        rows = self._bindings.filter(exchange=exchange)
        if other_than is not None:
            rows = rows.exclude(exchange_type=other_than)
        return self._retrying(rows.order_by("id").values_list("exchange_type", flat=True).first)

    def _store_binding(self, exchange: str, type: str, routing_key: str, queue: str) -> None:
        # get_or_create inserts in a savepoint, so a concurrent insert of the same
        # binding (IntegrityError on the unique constraint) is read back instead.
        row, created = self._retrying(
            self._bindings.get_or_create, exchange=exchange, routing_key=routing_key, queue=queue,
            defaults={"exchange_type": type},
        )
        existing = self._stored_type(exchange, type)  # also catches a concurrent declaration of another type
        if existing is not None:
            if created:
                self._retrying(self._bindings.filter(pk=row.pk).delete)
            raise ExchangeTypeMismatch(exchange, existing, type)

    # -- routing ------------------------------------------------------------------------

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        return self.exchange_types[self._routing(exchange)[0] or default]

    def _routing(self, exchange: str) -> tuple[str | None, list[Binding]]:
        """The type of ``exchange`` and its bindings: the stored ones (cached) and this process's."""
        now = monotonic()
        cached = self._binding_cache.get(exchange)
        if cached is None or cached[0] <= now:
            rows = self._retrying(lambda: list(
                self._bindings.filter(exchange=exchange).order_by("id").values_list("exchange_type", "routing_key",
                                                                                   "queue")))
            cached = (now + self.binding_cache_ttl, rows[0][0] if rows else None,
                      frozenset((key, queue) for _, key, queue in rows))
            if self.binding_cache_ttl > 0:
                self._binding_cache[exchange] = cached
        _, type, pairs = cached
        declared = self.state.exchanges.get(exchange)
        if declared is not None:
            type = declared["type"]
            pairs = pairs | {(meta[0], meta[2]) for meta in declared.get("table", ())}
        return type, [(key, None, queue) for key, queue in sorted(pairs)]

    def _lookup(self, exchange: str, routing_key: str, default: str | None = None) -> list[str]:
        """The queues a message to ``exchange`` with ``routing_key`` goes to; never an empty list."""
        routing_key = routing_key or ""
        type = None
        if not exchange:  # the default exchange: the routing key names the queue
            queues = [routing_key] if routing_key else []
        else:
            type, table = self._routing(exchange)
            queues = sorted(self.exchange_types[type or "direct"].lookup(table, exchange, routing_key, default))
        if queues:
            return queues
        default = default or self.deadletter_queue
        logger.warning("django:// no queue bound to exchange %r matches routing key %r; %s", exchange, routing_key,
                       f"sent to the dead-letter queue {default!r}" if default else "the publish is refused")
        if default:
            self._new_queue(default)
            return [default]
        raise Unroutable(exchange, routing_key, type)

    def basic_publish(self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any) -> None:
        """Route by the shared bindings: a row per matching queue, all inserted or none."""
        self._inplace_augment_message(message, exchange, routing_key)
        self._put_routed(self._lookup(exchange, routing_key), message, **kwargs)

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any) -> None:
        self._put_routed(self._lookup(exchange, routing_key), message, **kwargs)  # kombu's fanout deliver

    def _put_routed(self, queues: list[str], message: dict[str, Any], **kwargs: Any) -> None:
        if len(queues) == 1:
            self._put(queues[0], message, **kwargs)
        else:
            self._retrying(self._put_all, queues, message, **kwargs)

    def _put_all(self, queues: list[str], message: dict[str, Any], **kwargs: Any) -> None:
        with transaction.atomic(using=self.database):
            for queue in queues:
                self._put(queue, message, **kwargs)
