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

The sending side (bulk sends, parking, refusing a task no binding routes) is
:mod:`django_tasks_q.broker.transport.redis_sends`.

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

Consuming without a lost window: kombu BRPOPs a message and only then, in
a second command, records it as unacked. A worker killed (or a Redis that
dies) between the two has removed the message from its list without
recording it anywhere: it is lost, even with ``acks_late``. The soak test
(``bench/soak.py``) lost a few per thousand kills that way. This channel
takes messages and records them as unacked in one Lua script
(:mod:`~django_tasks_q.broker.transport.redis_scripts`; up to 16 per look,
never more than the prefetch window has room for), so a message is always
in its list or in the unacked set.
While looks find messages, the consumer takes the next batch at once
(:class:`Poller`: one round trip per batch); once a look finds none,
BRPOP waits for a *wake token*: every publish through this channel (and
every release of a parked message) pushes one onto ``tasksq.wake:<list>``.
A take of one message is written behind the wait and runs as it ends (one
round trip from a message's arrival to its delivery). The consuming side is
:mod:`~django_tasks_q.broker.transport.redis_takes`.
A message that arrives without a token (sent by a Celery client, or given
back by kombu's restore) is found within ``brpop_timeout`` (1 s), since the
consumer looks again after every wait. Early acks are written without a
reply (``CLIENT REPLY OFF``; see :meth:`Channel.raw_call`).

Selected automatically for ``redis://`` and ``rediss://`` broker URLs by
:func:`django_tasks_q.broker.connection.new_connection`.
"""

from __future__ import annotations

import logging
import socket
import ssl
from contextlib import contextmanager
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ..delayed import REDIS_KEY, RELEASE_LEAD
from ..topic import TopicExchange
from .keeper import KeeperMixin, held_tags
from .redis_scripts import RELEASE_SCRIPT
from .redis_sends import SendsMixin, bulk_string, resp
from .redis_takes import Take, TakesMixin

RELEASE_BATCH = 1000
#: Early acks go out between these two (raw_call): Redis sends no reply to what it receives in between.
REPLY_OFF = resp("CLIENT", "REPLY", "OFF")
REPLY_ON = resp("CLIENT", "REPLY", "ON")
logger = logging.getLogger(__name__)



def held_writes_flag(sock: Any) -> int:
    """``MSG_MORE`` for a plain TCP socket (Linux), else 0. The kernel then holds a quiet write
    until the next write without the flag, the socket's close (a killed process's included) or its
    zero-window probe timer (0.2 s on a local network), so a batch's acks reach Redis with the
    next take: one wake-up of Redis per batch instead of one per ack. TLS sockets refuse flags."""
    more = getattr(socket, "MSG_MORE", 0)
    if isinstance(sock, ssl.SSLSocket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return 0
    return more


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the two commands of an ack with their fixed parts encoded once: only the tag changes
        self._zrem = b"*3\r\n$4\r\nZREM\r\n" + bulk_string(self.unacked_index_key.encode())
        self._hdel = b"*3\r\n$4\r\nHDEL\r\n" + bulk_string(self.unacked_key.encode())

    def ack(self, delivery_tag: str) -> None:
        """kombu's ack (drop the tag from the unacked index and hash), once per task run, as raw RESP on
        the consumer's own connection (:meth:`Channel.raw_call`), without waiting for a reply: the
        task starts while the ack travels, as an AMQP ack does (see ``raw_call`` for why it still
        lands before the task could be given back, and why Redis sends no reply to it)."""
        tag = bulk_string(delivery_tag.encode())
        self.channel.raw_call(self._zrem + tag + self._hdel + tag, 2, wait=False)
        kombu_redis.virtual.QoS.ack(self, delivery_tag)

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag == self.channel._held_by_script:  # POP_SCRIPT recorded it already
            kombu_redis.virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(SendsMixin, TakesMixin, kombu_redis.Channel):
    QoS = QoS
    from_transport_options = (  # type: ignore[assignment, unused-ignore]  # kombu infers a fixed-length tuple
        *kombu_redis.Channel.from_transport_options, "binding_cache_ttl")
    binding_cache_ttl: float = 1.0
    # kept fresh by the keeper while the consumer lives
    visibility_timeout: float = 60.0  # type: ignore[assignment, unused-ignore]  # kombu infers int
    # kombu's 300 s: a worker killed during its restore sweep would stop every sweep for five minutes
    unacked_mutex_expire: int = 30
    priority_steps = list(range(10))
    exchange_types = {**kombu_redis.Channel.exchange_types, "topic": TopicExchange}  # AMQP's # and *
    # kombu 5.6 made a wait's length configurable (and sets it per channel); kombu 5.5 always waited 1 s
    brpop_timeout: float = 1.0

    if not hasattr(kombu_redis.Channel, "_flush_brpop_reauth"):
        def _flush_brpop_reauth(self) -> None:
            """kombu 5.7 re-authenticates the BRPOP connection here (streaming credentials); older kombu
            has no such credentials."""

    def _get_message_priority(self, message: dict, reverse: bool = False) -> int:
        # kombu asks for the plain value when it files a message; we file it inverted
        return super()._get_message_priority(message, reverse=not reverse)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync_client: Any = None
        self._tables: dict[str, tuple[float, list]] = {}
        self._held_by_script: str | None = None
        self._unrecorded: set[str] = set()  # queues consumed with no_ack (remote control's replies)
        self._scripts_client: Any = None
        self._scripts: dict[str, Any] = {}
        self._raw_connection: Any = None
        self._raw_pending = 0  # replies owed on the raw connection (raw_call(wait=False), replies on)
        self._replies_off = False  # the raw connection is in CLIENT REPLY OFF (quiet writes since)
        self._can_silence: bool | None = None  # does the server take CLIENT REPLY? (asked once per connection)
        self._shas: dict[str, str] = {}
        self._found_last_time = True  # look before the first wait
        self._queued_take: Take | None = None  # the take behind the wait in flight (_brpop_start)
        self._raw_sock: Any = None  # the socket the reply mode below was set on
        self._hold_flag = 0  # MSG_MORE where the raw socket takes it (held_writes_flag)
        super().__init__(*args, **kwargs)

    @contextmanager
    def conn_or_acquire(self, client: Any = None):
        if client is not None:
            yield client
            return
        if self._sync_client is None:
            self._sync_client = self._create_client()
        yield self._sync_client

    # -- the consumer's hot path: raw RESP on a connection of its own ---------------------------

    def raw_call(self, packed: bytes, replies: int, *, wait: bool = True) -> list:
        """Write ``packed`` commands on this channel's own connection and read their ``replies`` replies.

        Used once or twice per task run (take, ack) and once per send: redis-py's pooled path --
        take a connection, health-check it, pack, release -- cost more than
        the round trip itself. Any error (the connection broke, or Redis
        answered an error) drops the connection, so no reply is left unread
        on it, and is raised; the next call reconnects.

        ``wait=False`` (the early ack) returns once the commands are written,
        and Redis is asked not to reply to them (``CLIENT REPLY OFF`` until
        the next call that waits, which turns replies back on first); the
        kernel holds the write until that call (:func:`held_writes_flag`), so
        Redis wakes once per batch of acks, not once per ack. No replies,
        because of a worker killed while a write is in flight: a socket closed
        with unread data sends an RST instead of a FIN, and an RST can make
        Redis discard a write it has not read yet -- an ack lost, its task run
        twice. With no replies there is never unread data, so the close is a
        FIN, read after every write before it. (Waiting for each reply
        instead cost a round trip per task: 40 to 45 us here.) What is given
        up is the ack's own error reply: an ack Redis refused (``MISCONF``, a
        replica's ``READONLY``) is not reported; the next take, which writes
        too, is -- and a started task whose ack did not land is acked, not
        run, when it comes back to this worker, as when the connection breaks
        (``Worker._already_started``).

        A server that does not take ``CLIENT REPLY`` (some proxies) is asked
        once per connection; there each ``wait=False`` call owes its replies,
        which the next call reads before it writes, so that at most one write
        is ever in flight and a close sends an RST only after Redis answered
        (and so had read) the last write.
        """
        connection = self._raw_connection
        if connection is None:
            with self.conn_or_acquire() as client:
                connection = self._raw_connection = client.connection_pool.make_connection()
        try:
            if connection._sock is None or connection._sock is not self._raw_sock:  # new, or reconnected
                connection.connect()
                self._raw_sock, self._raw_pending, self._replies_off, self._can_silence = \
                    connection._sock, 0, False, None
                self._hold_flag = held_writes_flag(connection._sock)
            if not wait and self._silenceable(connection):
                try:
                    connection._sock.sendall(packed if self._replies_off else REPLY_OFF + packed, self._hold_flag)
                except OSError as exc:
                    raise RedisConnectionError(f"redis:// writing an early ack failed: {exc}") from exc
                self._replies_off = True
                return []
            while self._raw_pending:
                self._raw_pending -= 1
                connection.read_response()
            if self._replies_off:  # CLIENT REPLY ON answers OK: read it first
                connection.send_packed_command([REPLY_ON + packed], check_health=False)
                self._replies_off = False
                connection.read_response()
            else:
                connection.send_packed_command([packed], check_health=False)
            if not wait:
                self._raw_pending = replies
                return []
            return [connection.read_response() for _ in range(replies)]
        except BaseException:
            self.close_raw_connection()
            raise

    def _silenceable(self, connection: Any) -> bool:
        """Does the server behind ``connection`` honour ``CLIENT REPLY``? Asked once per connection:
        ``OFF``, ``ON``, ``PING`` answer exactly ``OK`` then ``PONG`` where it does; a server that
        refuses the command, or answers ``OFF`` anyway, answers three times."""
        if self._can_silence is None:
            connection.send_packed_command([REPLY_OFF + REPLY_ON + resp("PING")], check_health=False)
            replies: list = []
            while len(replies) < 3:
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
                if replies[-1] in (b"PONG", "PONG"):
                    break
            self._can_silence = len(replies) == 2
            if not self._can_silence:
                logger.info("redis:// the server does not honour CLIENT REPLY: early acks wait for their reply")
        return self._can_silence

    def close_raw_connection(self, *, settle: bool = False) -> None:
        """Drop the raw connection; with ``settle``, first read the replies still owed (a clean close)."""
        connection, self._raw_connection = self._raw_connection, None
        pending, self._raw_pending = self._raw_pending, 0
        self._replies_off = False  # quiet writes need no settling: Redis reads them before the FIN
        if connection is None:
            return
        try:
            if settle:
                for _ in range(pending):
                    connection.read_response()
        except Exception:
            logger.warning("redis:// an unconfirmed ack failed while the channel closed", exc_info=True)
        finally:
            connection.disconnect()

    def _script(self, client: Any, source: str) -> Any:
        """The registered script for ``client``, made once: registering hashes the source every time."""
        if self._scripts_client is not client:
            self._scripts_client, self._scripts = client, {}
        if source not in self._scripts:
            self._scripts[source] = client.register_script(source)
        return self._scripts[source]

    def release_parked(self) -> int:
        """Move parked messages due within ``RELEASE_LEAD`` seconds to their lists; the number moved."""
        moved = 0
        with self.conn_or_acquire() as client:
            release = self._script(client, RELEASE_SCRIPT)
            while True:
                count = int(release(keys=[REDIS_KEY], args=[time() + RELEASE_LEAD, RELEASE_BATCH]))
                moved += count
                if count < RELEASE_BATCH:
                    return moved

    # -- unacked messages stay ours while we live ----------------------------------------

    @property
    def extension_interval(self) -> float:
        return float(self.visibility_timeout) / 3

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        self.connection.keep_claims()
        if no_ack:  # nobody will ack what this consumer takes: the take must not record it unacked
            self._unrecorded.add(queue)
        else:
            self._unrecorded.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        self._unrecorded.discard(self._tag_to_queue.get(consumer_tag))
        return super()._basic_cancel(consumer_tag)

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
        if connection is self._in_poll:
            self._queued_take = None  # its answer went with the connection
        self.close_raw_connection()
        super()._on_connection_disconnect(connection)

    def close(self) -> None:
        self.close_raw_connection(settle=True)
        super().close()


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, except that a channel whose last look found messages takes the next ones
    before any wait: one round trip per batch (the take itself, read at once, so the batch is
    sized by the prefetch room when it lands and no taken message waits in a socket unread)."""

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        for channel in self._channels:
            if channel.may_take_ahead():
                self._in_protected_read = True  # a basic_cancel from a callback waits, as in kombu's get()
                try:
                    channel._take_one()
                    return
                except Empty:
                    break  # nothing there: wait below
                finally:
                    self._in_protected_read = False
                    while self.after_read:
                        self.after_read.pop()()
        return super().get(callback, timeout)


class Transport(KeeperMixin, kombu_redis.Transport):  # type: ignore[misc, unused-ignore]  # kombu types channels as None
    Channel = Channel
    keeper_name = "redis-transport-keeper"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()  # type: ignore[assignment, unused-ignore]  # kombu types it as None

