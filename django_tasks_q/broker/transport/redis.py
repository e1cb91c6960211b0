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
The next take is written behind the wait and runs as it ends (one round
trip from a message's arrival to its delivery).
A message that arrives without a token (sent by a Celery client, or given
back by kombu's restore) is found within ``brpop_timeout`` (1 s), since the
consumer looks again after every wait. Early acks are written without a
reply (``CLIENT REPLY OFF``; see :meth:`Channel.raw_call`).

Selected automatically for ``redis://`` and ``rediss://`` broker URLs by
:func:`django_tasks_q.broker.connection.new_connection`.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from contextlib import contextmanager
from time import monotonic, time
from typing import Any

import logging
from queue import Empty

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import ConnectionError as RedisConnectionError, NoScriptError, ResponseError

from ...core.protocol import fast_loads
from ..delayed import REDIS_KEY, RELEASE_LEAD
from ..topic import TopicExchange
from .keeper import KeeperMixin, held_tags
from .redis_scripts import POP_SCRIPT, RELEASE_SCRIPT
from .redis_sends import WAKE_PREFIX, SendsMixin, bulk_string, resp

RELEASE_BATCH = 1000
#: Most messages one look takes (still never more than the prefetch window has room for).
TAKE_BATCH = 16
#: Where a list entry that is not a kombu message goes (it cannot be refused like a message).
DEAD_LIST = "tasksq.dead.raw"
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


class Channel(SendsMixin, kombu_redis.Channel):
    QoS = QoS
    from_transport_options = (  # type: ignore[assignment]  # kombu infers a fixed-length tuple
        *kombu_redis.Channel.from_transport_options, "binding_cache_ttl")
    binding_cache_ttl: float = 1.0
    # kept fresh by the keeper while the consumer lives
    visibility_timeout: float = 60.0  # type: ignore[assignment]  # kombu infers int
    # kombu's 300 s: a worker killed during its restore sweep would stop every sweep for five minutes
    unacked_mutex_expire: int = 30
    priority_steps = list(range(10))
    exchange_types = {**kombu_redis.Channel.exchange_types, "topic": TopicExchange}  # AMQP's # and *

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
        self._take_queued = False  # a take went out behind the wait in flight (_brpop_start)
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

    # -- consuming: take and record in one step -------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Wait for a wake token, with a take queued behind the wait on the same connection: Redis
        runs it the moment the wait ends (a client's commands run in order), and both answers come
        back together -- a round trip less between a message's arrival and its run. The take is
        sized to the prefetch room now, which only grows while the wait is out (nothing else is
        delivered on this channel meanwhile). (While looks find messages, :class:`Poller` takes
        without waiting.)"""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        connection = self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu types it as None
        wakes = [WAKE_PREFIX + self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        commands = [resp("BRPOP", *wakes, timeout or self.brpop_timeout or 1)]
        take = self._take_command()
        self._take_queued = take is not None
        connection.send_packed_command(commands if take is None else commands + [take])

    def _brpop_read(self, **options: Any) -> bool:
        connection = self.client.connection
        take_queued, self._take_queued = self._take_queued, False
        taken: list | None = None  # None: no take went out behind the wait, or Redis lacked its script
        try:
            try:
                self.client.parse_response(connection, "BRPOP", **options)
                if take_queued:
                    taken = connection.read_response()
            except NoScriptError:  # a new or flushed Redis: the take below loads the script
                pass
            except self.connection_errors:
                connection.disconnect()
                raise
            if self._closing:  # kombu's close() reads the last wait's reply: take nothing more
                self._give_back(taken or [])
                raise Empty()
            return self._take_one() if taken is None else self._deliver_taken(taken)
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu types it as bool
            self._flush_brpop_reauth()

    def may_take_ahead(self) -> bool:
        """Should the poller take at once, without waiting? When the last look found messages, this
        channel consumes, has prefetch room, and no wait of its own is in flight."""
        return (self._found_last_time and not self._in_poll and not self._closing and bool(self.active_queues)
                and self.qos.can_consume())

    def _take_command(self) -> bytes | None:
        """The take script's call for as many messages as the prefetch window has room for (None:
        no room): it pops them from this channel's lists in order and records each unacked."""
        queues = list(self.active_queues)
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        unrecorded = ([int(queue in self._unrecorded) for pri in self.priority_steps for queue in queues]
                      if self._unrecorded else [])  # none (a worker's task queues): every take is recorded
        room = self.qos.can_consume_max_estimate()  # None: no prefetch limit
        want = TAKE_BATCH if room is None else min(TAKE_BATCH, room)
        if want < 1:
            return None
        keys += [self.unacked_key, self.unacked_index_key]
        return self._evalsha(POP_SCRIPT, keys, [time(), want, *unrecorded])

    def _take_one(self) -> bool:
        """Take as many messages as the prefetch window allows (one round trip) and deliver them."""
        command = self._take_command()
        if command is None:
            raise Empty()
        return self._deliver_taken(self._eval(POP_SCRIPT, command))

    def _deliver_taken(self, taken: list) -> bool:
        """Deliver what a take returned (``(list, message, tag)`` triples); raise Empty if nothing."""
        self._found_last_time = bool(taken)
        delivered = False
        for index in range(0, len(taken), 3):
            key, raw, tag = bytes_to_str(taken[index]), taken[index + 1], taken[index + 2]
            payload = None if tag is None else self._kombu_message(raw, bytes_to_str(tag))
            if payload is None:
                self._set_aside(key, raw, tag)
                continue
            queue = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self._held_by_script = payload["properties"]["delivery_tag"]
            try:
                self.connection._deliver(payload, queue)
            finally:
                self._held_by_script = None
            delivered = True
        if not delivered:
            raise Empty()
        return True

    def _give_back(self, taken: list) -> None:
        """Put what a take returned back where it was, unchanged and next in line, and drop its
        unacked records: taken as the channel closed, it was never delivered."""
        if not taken:
            return
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()  # MULTI: back in its list and out of the unacked set together
            for index in range(len(taken) - 3, -1, -3):  # last taken first, so the first ends up next
                key, raw, tag = taken[index], taken[index + 1], taken[index + 2]
                pipe.rpush(key, raw)
                if tag is not None:
                    pipe.zrem(self.unacked_index_key, tag).hdel(self.unacked_key, tag)
            for key in {taken[index] for index in range(0, len(taken), 3)}:
                pipe.lpush(WAKE_PREFIX + bytes_to_str(key), 1)
            pipe.execute()

    def _kombu_message(self, raw: bytes, tag: str) -> dict | None:
        """The decoded message the take script recorded under ``tag``, if kombu can make a message of
        it; else None. Lua's decoder takes what Python's may not (nesting past Python's recursion
        limit, a ``__type__`` value kombu cannot revive), and kombu's message cannot be made of a
        body its ``body_encoding`` cannot decode: raised from the take, each stopped the batch every
        time the entry came back. (Headers that are not a mapping are the worker's to refuse:
        ``worker.intake`` guards kombu's message class against them.)"""
        try:
            payload = fast_loads(bytes_to_str(raw))
            properties = payload["properties"]
            if properties["delivery_tag"] != tag:
                return None
            if payload.get("body"):
                self.decode_body(payload["body"], properties.get("body_encoding"))  # as kombu's Message will
            return payload
        except Exception:
            return None

    def _set_aside(self, key: str, raw: bytes, tag: bytes | None) -> None:
        """A list entry that is not a kombu message cannot be refused like one: move its bytes to
        ``DEAD_LIST``, and drop the unacked record the take script made for it, if any."""
        logger.error("redis:// list %r held a message that is not kombu JSON; moved to %r: %.200r",
                     key, DEAD_LIST, raw)
        self.raw_call(resp("LPUSH", DEAD_LIST, raw), 1)  # kept first: if Redis refuses it, the record stays
        if tag is not None:
            self.raw_call(resp("ZREM", self.unacked_index_key, tag) + resp("HDEL", self.unacked_key, tag), 2)

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

    def _evalsha(self, source: str, keys: list[str], args: list) -> bytes:
        """``EVALSHA`` of ``source`` as RESP bytes."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        return resp("EVALSHA", sha, len(keys), *keys, *args)

    def _eval(self, source: str, command: bytes) -> Any:
        """Run ``command`` (:meth:`_evalsha` of ``source``) through :meth:`raw_call`, loading the
        script first when Redis does not know it."""
        try:
            return self.raw_call(command, 1)[0]
        except NoScriptError:  # a new or flushed Redis
            pass
        return self.raw_call(resp("SCRIPT", "LOAD", source) + command, 2)[1]

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


class Transport(KeeperMixin, kombu_redis.Transport):  # type: ignore[misc]  # kombu types channels as None
    Channel = Channel
    keeper_name = "redis-transport-keeper"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()  # type: ignore[assignment]  # kombu types it as None

