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

Delayed delivery: a message carrying the park header
(:mod:`django_tasks_q.broker.delayed`) goes to the sorted set
``tasksq.delayed`` instead of its list; ``release_parked()`` moves due
ones to their lists in one Lua script.

Unacked messages: kombu gives a message back once it has been unacked for
``visibility_timeout`` seconds, however alive its consumer is -- so a task
running longer than the timeout ran twice, and Celery users set the timeout
to hours, which is also how long a killed worker's messages stay away. Here
a keeper thread (:mod:`~django_tasks_q.broker.transport.keeper`) refreshes
the unacked index for every message a live consumer holds, so the default
timeout is 60 seconds: a dead worker's messages come back within a minute
and a live one keeps its messages for as long as it runs. In a fleet that
mixes Celery workers on the same Redis, set ``visibility_timeout`` to
Celery's value: Celery workers do not refresh theirs.

Selected automatically for ``redis://`` and ``rediss://`` broker URLs by
:func:`django_tasks_q.broker.connection.new_connection`.
"""

from __future__ import annotations

from contextlib import contextmanager
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from ..delayed import PARK_HEADER, REDIS_KEY, RELEASE_LEAD
from ..topic import TopicExchange
from .keeper import KeeperMixin, held_tags

#: Move due parked messages to their lists; the member is "<list key>\n<message>".
RELEASE_SCRIPT = r"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
    redis.call('ZREM', KEYS[1], member)
    local cut = string.find(member, '\n', 1, true)
    redis.call('LPUSH', string.sub(member, 1, cut - 1), string.sub(member, cut + 1))
end
return #due
"""
RELEASE_BATCH = 1000


class Channel(kombu_redis.Channel):
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "binding_cache_ttl")
    binding_cache_ttl: float = 1.0
    visibility_timeout: float = 60.0  # kept fresh by the keeper while the consumer lives
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

    # -- delayed delivery ----------------------------------------------------------------

    def _put(self, queue: str, message: dict, **kwargs: Any) -> None:
        headers = message.get("headers")
        at = headers.get(PARK_HEADER) if isinstance(headers, dict) else None
        if at is None or float(at) <= time() + RELEASE_LEAD:
            return super()._put(queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            client.zadd(REDIS_KEY, {f"{key}\n{dumps(message)}": float(at)})

    def release_parked(self) -> int:
        """Move parked messages due within ``RELEASE_LEAD`` seconds to their lists; the number moved."""
        moved = 0
        with self.conn_or_acquire() as client:
            release = client.register_script(RELEASE_SCRIPT)
            while True:
                count = int(release(keys=[REDIS_KEY], args=[time() + RELEASE_LEAD, RELEASE_BATCH]))
                moved += count
                if count < RELEASE_BATCH:
                    return moved

    # -- unacked messages stay ours while we live ----------------------------------------

    @property
    def extension_interval(self) -> float:
        return float(self.visibility_timeout) / 3

    def basic_consume(self, *args: Any, **kwargs: Any) -> Any:
        self.connection.keep_claims()
        return super().basic_consume(*args, **kwargs)

    def extend_reservations(self) -> None:
        """Refresh the unacked-index score of every message this channel holds (called by the keeper)."""
        held = held_tags(self._qos)
        if held:
            with self.conn_or_acquire() as client:
                client.zadd(self.unacked_index_key, dict.fromkeys(held, time()), xx=True)

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


class Transport(KeeperMixin, kombu_redis.Transport):
    Channel = Channel
    keeper_name = "redis-transport-keeper"

