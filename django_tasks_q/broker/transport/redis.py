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

One class per kombu class it extends, and each lists in its docstring the
kombu hooks it overrides, why, in one line each (a unit test,
``tests/unit/test_redis_channel_hooks.py``, fails on an override that is not
listed). The logic behind the longer hooks lives in helpers the channel is
composed of, each reaching the channel through one typed attribute:
:class:`~.redis_takes.Takes` (consuming), :class:`~.redis_sends.Sends`
(sending: bulk sends, parking, refusing a task no binding routes) and
:class:`~.redis_raw.RawConnection` (the channel's own connection).

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
reply (``CLIENT REPLY OFF``; see :meth:`.redis_raw.RawConnection.call`).

Selected automatically for ``redis://`` and ``rediss://`` broker URLs by
:func:`django_tasks_q.broker.connection.new_connection`.
"""

from __future__ import annotations

from contextlib import contextmanager
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis

from ..delayed import REDIS_KEY, RELEASE_LEAD
from ..topic import TopicExchange
from .keeper import KeeperMixin, held_tags
from .redis_raw import RawConnection
from .redis_scripts import RELEASE_SCRIPT
from .redis_sends import Sends, bulk_string
from .redis_takes import Takes

RELEASE_BATCH = 1000


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, with acks written by the channel's raw connection.

    kombu hooks it overrides:

    - ``__init__``: encodes the fixed parts of an ack's two commands once
    - ``ack``: writes the ack as raw RESP without waiting for a reply (:meth:`.RawConnection.call`)
    - ``append``: skips kombu's unacked write for a message the take script recorded already
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw: RawConnection = self.channel.raw
        self._takes: Takes = self.channel.takes
        # the two commands of an ack with their fixed parts encoded once: only the tag changes
        self._zrem = b"*3\r\n$4\r\nZREM\r\n" + bulk_string(self.unacked_index_key.encode())
        self._hdel = b"*3\r\n$4\r\nHDEL\r\n" + bulk_string(self.unacked_key.encode())

    def ack(self, delivery_tag: str) -> None:
        """kombu's ack (drop the tag from the unacked index and hash), once per task run, as raw RESP on
        the consumer's own connection, without waiting for a reply: the task starts while the ack
        travels, as an AMQP ack does (see :meth:`.RawConnection.call` for why it still lands before
        the task could be given back, and why Redis sends no reply to it)."""
        tag = bulk_string(delivery_tag.encode())
        self._raw.call(self._zrem + tag + self._hdel + tag, 2, wait=False)
        kombu_redis.virtual.QoS.ack(self, delivery_tag)

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag == self._takes.held_by_script:  # the take script recorded it already
            kombu_redis.virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, composed with :class:`Takes`, :class:`Sends` and a :class:`RawConnection`.

    kombu hooks it overrides (methods):

    - ``__init__``: makes the helpers (before kombu's set-up, which may already call the hooks below)
    - ``_brpop_start``: waits for a wake token with a take queued behind the wait (:meth:`.Takes.brpop_start`)
    - ``_brpop_read``: reads the wait's and the take's answers, delivers what it took (:meth:`.Takes.brpop_read`)
    - ``_poll_error``: a wait with a take behind it owes two answers: drops the connection instead
    - ``_put``: parks a message with the park header; pushes a wake token with each message (:meth:`.Sends.put`)
    - ``basic_publish``: refuses a task no binding routes instead of dropping it (:meth:`.Sends.refuse_unroutable`)
    - ``basic_consume``: starts the keeper; remembers no_ack queues, whose takes are not recorded unacked
    - ``_basic_cancel``: forgets a cancelled no_ack queue
    - ``_get_message_priority``: files priority ``p`` under ``9 - p``, so that 9 runs first as on other brokers
    - ``conn_or_acquire``: one client per channel instead of one per command
    - ``get_table``: caches the exchange's binding table for ``binding_cache_ttl`` seconds
    - ``_queue_bind``: forgets the cached table on a new binding
    - ``_delete``: forgets the cached table of a deleted queue's exchange
    - ``_on_connection_disconnect``: drops the client, the raw connection and the take queued behind a wait
    - ``close``: reads the replies still owed on the raw connection first

    kombu settings it overrides (class attributes):

    - ``QoS``: our :class:`QoS`
    - ``from_transport_options``: adds ``binding_cache_ttl`` to kombu's transport options
    - ``exchange_types``: topic exchanges match as AMQP does (``media.#`` matches ``media``)
    - ``priority_steps``: ten steps (0-9) instead of kombu's four
    - ``visibility_timeout``: 60 s instead of an hour, kept fresh by the keeper while the consumer lives
    - ``unacked_mutex_expire``: 30 s instead of 300: a worker killed mid-sweep stops every sweep that long
    - ``brpop_timeout``: 1 s, kombu 5.5's fixed wait (kombu 5.6 made it configurable, set per channel)
    """

    QoS = QoS
    from_transport_options = (  # type: ignore[assignment, unused-ignore]  # kombu infers a fixed-length tuple
        *kombu_redis.Channel.from_transport_options, "binding_cache_ttl")
    binding_cache_ttl: float = 1.0
    visibility_timeout: float = 60.0  # type: ignore[assignment, unused-ignore]  # kombu infers int
    unacked_mutex_expire: int = 30
    priority_steps = list(range(10))
    exchange_types = {**kombu_redis.Channel.exchange_types, "topic": TopicExchange}
    brpop_timeout: float = 1.0
    # kombu's own, declared (not set) with what they hold: the connection a wait is in flight on, and
    # when the wait went out (kombu infers bool and None from its defaults)
    _in_poll: Any
    _brpop_sent_at: Any

    if not hasattr(kombu_redis.Channel, "_flush_brpop_reauth"):
        def _flush_brpop_reauth(self) -> None:
            """kombu 5.7 re-authenticates the BRPOP connection here (streaming credentials); older kombu
            has no such credentials."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync_client: Any = None
        self._tables: dict[str, tuple[float, list]] = {}
        self._scripts_client: Any = None
        self._scripts: dict[str, Any] = {}
        self.raw = RawConnection(self)
        self.takes = Takes(self)
        self.sends = Sends(self)
        super().__init__(*args, **kwargs)

    # -- kombu's hooks -------------------------------------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        self.takes.brpop_start(timeout)

    def _brpop_read(self, **options: Any) -> bool:
        return self.takes.brpop_read(**options)

    def _poll_error(self, type: str, **options: Any) -> None:
        if not self.takes.drop_wait(type):
            super()._poll_error(type, **options)

    def _put(self, queue: str, message: dict, **kwargs: Any) -> None:
        self.sends.put(queue, message)

    def basic_publish(self, message: dict, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        self.sends.refuse_unroutable(message, exchange, routing_key)
        return super().basic_publish(message, exchange, routing_key, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        self.connection.keep_claims()
        if no_ack:  # nobody will ack what this consumer takes: the take must not record it unacked
            self.takes.unrecorded.add(queue)
        else:
            self.takes.unrecorded.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        self.takes.unrecorded.discard(self._tag_to_queue.get(consumer_tag))
        return super()._basic_cancel(consumer_tag)

    def _get_message_priority(self, message: dict, reverse: bool = False) -> int:
        # kombu asks for the plain value when it files a message; we file it inverted
        return super()._get_message_priority(message, reverse=not reverse)

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
        self.takes.forget_queued(connection)  # its answer went with the connection
        self.raw.close()
        super()._on_connection_disconnect(connection)

    def close(self) -> None:
        self.raw.close(settle=True)
        super().close()

    # -- ours: bulk sends (broker/publisher.py), parking (worker/parking.py), the keeper -------------

    def put_messages(self, exchange: str, routing_key: str, messages: list[dict]) -> int | None:
        """Send ``messages`` in bulk (:meth:`.Sends.put_messages`)."""
        return self.sends.put_messages(exchange, routing_key, messages)

    def put_encoded(self, exchange: str, routing_key: str, messages: list[tuple[str, int]]) -> int | None:
        """Send messages already written as kombu's JSON in bulk (:meth:`.Sends.put_encoded`)."""
        return self.sends.put_encoded(exchange, routing_key, messages)

    def restore_bindings(self, queue: str) -> None:
        """Write again the bindings of ``queue`` that Redis lost (:meth:`.Sends.restore_bindings`)."""
        self.sends.restore_bindings(queue)

    def forget_table(self, exchange: str) -> None:
        """Read ``exchange``'s binding table from Redis again next time (its queue may be declared meanwhile)."""
        self._tables.pop(exchange, None)

    def script(self, client: Any, source: str) -> Any:
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
            release = self.script(client, RELEASE_SCRIPT)
            while True:
                count = int(release(keys=[REDIS_KEY], args=[time() + RELEASE_LEAD, RELEASE_BATCH]))
                moved += count
                if count < RELEASE_BATCH:
                    return moved

    @property
    def extension_interval(self) -> float:
        return float(self.visibility_timeout) / 3

    def extend_reservations(self) -> None:
        """Refresh the unacked-index score of every message this channel holds (called by the keeper)."""
        held = held_tags(self._qos)
        if held:
            with self.conn_or_acquire() as client:
                client.zadd(self.unacked_index_key, dict.fromkeys(held, time()), xx=True)


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, except that a channel whose last look found messages takes the next ones
    before any wait: one round trip per batch (the take itself, read at once, so the batch is
    sized by the prefetch room when it lands and no taken message waits in a socket unread).

    kombu hooks it overrides:

    - ``get``: takes the next batch before any wait while looks find messages (:meth:`.Takes.take_one`)
    """

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        for channel in self._channels:
            takes = channel.takes
            if takes.may_take_ahead():
                self._in_protected_read = True  # a basic_cancel from a callback waits, as in kombu's get()
                try:
                    takes.take_one()
                    return
                except Empty:
                    break  # nothing there: wait below
                finally:
                    self._in_protected_read = False
                    while self.after_read:
                        self.after_read.pop()()
        return super().get(callback, timeout)


class Transport(KeeperMixin, kombu_redis.Transport):  # type: ignore[misc, unused-ignore]  # kombu types channels as None
    """kombu's Redis transport with our channel, our poller and the keeper thread.

    kombu hooks it overrides:

    - ``Channel``: our :class:`Channel`
    - ``__init__``: installs our :class:`Poller`
    - ``cycle``: our :class:`Poller` instead of kombu's (set by ``__init__``)
    - ``close_connection``: stops the keeper thread with the connection (:class:`~.keeper.KeeperMixin`)
    """

    Channel = Channel
    keeper_name = "redis-transport-keeper"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()  # type: ignore[assignment, unused-ignore]  # kombu types it as None
