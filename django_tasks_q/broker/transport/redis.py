"""``redis://`` -- kombu's Redis transport with the per-message set-up taken out.

Same URL, options, key layout and message format as kombu's transport (so
Celery clients and workers share queues with ours); two differences on the
publish path, each something kombu redoes for every message:

* kombu builds a new ``redis.Redis`` client for each command outside the
  consumer (two per publish); with redis-py 8 that costs more than the
  LPUSH itself. This channel builds one and reuses it (it shares the
  channel's connection pool, as kombu's throwaway clients do).
* kombu reads the exchange's binding table (SMEMBERS) on every publish.
  This channel caches it for ``binding_cache_ttl`` seconds (default 1.0)
  and forgets it when it binds a queue itself, so a publisher's own queue
  declarations are seen at once and another process's new binding within
  the TTL.

Topic exchanges match as AMQP does (:mod:`django_tasks_q.broker.topic`):
``media.#`` also matches ``media``, which kombu's own matcher does not.

Priorities: kombu's Redis channel consumes priority 0 first -- the opposite
of RabbitMQ and of ``django://``, a known trap. This channel stores a
message of priority ``p`` in kombu's sub-queue ``9 - p`` so that, as on every
other broker, a higher number runs first; it uses ten steps (0-9) instead of
kombu's four so that every priority keeps its own place. Messages from a
Celery client keep Celery's Redis meaning on our workers and Celery's.

Selected automatically for ``redis://`` and ``rediss://`` broker URLs by
:func:`django_tasks_q.broker.connection.new_connection`.
"""

from __future__ import annotations

from contextlib import contextmanager
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis

from ..topic import TopicExchange


class Channel(kombu_redis.Channel):
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "binding_cache_ttl")
    binding_cache_ttl: float = 1.0
    priority_steps = list(range(10))
    exchange_types = {**kombu_redis.Channel.exchange_types, "topic": TopicExchange}  # AMQP's # and *

    def _get_message_priority(self, message: dict, reverse: bool = False) -> int:
        # kombu asks for the plain value when it files a message; we file it inverted
        return super()._get_message_priority(message, reverse=not reverse)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync_client: Any = None
        self._tables: dict[str, tuple[float, list]] = {}
        super().__init__(*args, **kwargs)

    @contextmanager
    def conn_or_acquire(self, client: Any = None):
        if client is not None:
            yield client
            return
        if self._sync_client is None:
            self._sync_client = self._create_client()
        yield self._sync_client

    def get_table(self, exchange: str) -> list:
        cached = self._tables.get(exchange)
        now = monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        table = super().get_table(exchange)
        self._tables[exchange] = (now + float(self.binding_cache_ttl), table)
        return table

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        self._tables.pop(exchange, None)
        super()._queue_bind(exchange, routing_key, pattern, queue)

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any) -> None:
        self._tables.pop(exchange, None)
        super()._delete(queue, exchange, routing_key, pattern, *args, **kwargs)

    def _on_connection_disconnect(self, connection: Any) -> None:
        self._sync_client = None
        super()._on_connection_disconnect(connection)


class Transport(kombu_redis.Transport):
    Channel = Channel

