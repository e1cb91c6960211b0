"""The consuming side of the ``redis://`` channel: take messages and record them unacked in one step.

* While looks find messages, the consumer takes the next batch at once
  (:meth:`Takes.take_one`, one round trip per batch, sized to the
  prefetch window's room); the take is one Lua script
  (:data:`~django_tasks_q.broker.transport.redis_scripts.POP_SCRIPT`), so a
  message is always in its list or recorded unacked.
* Once a look finds none, BRPOP waits for a wake token with a take of one
  message queued behind it (:meth:`Takes.brpop_start`); what that take
  returned but can no longer be delivered when its answer is read goes back
  to its list (:meth:`Takes.give_back`).
* A list entry that is not a kombu message is moved to :data:`DEAD_LIST`.
"""

from __future__ import annotations

import hashlib
import logging
from queue import Empty
from time import monotonic, time
from typing import TYPE_CHECKING, Any, NamedTuple

from kombu.utils.encoding import bytes_to_str
from redis.exceptions import NoScriptError, ResponseError

from ...core.protocol import fast_loads
from ...resp import bulk_strings
from .redis_scripts import GIVE_BACK_SCRIPT, POP_SCRIPT
from .redis_sends import WAKE_PREFIX, resp

if TYPE_CHECKING:
    from .redis import Channel

#: Most messages one look takes (still never more than the prefetch window has room for).
TAKE_BATCH = 16
#: Where a list entry that is not a kombu message goes (it cannot be refused like a message).
DEAD_LIST = "tasksq.dead.raw"
logger = logging.getLogger(__name__)


class Take(NamedTuple):
    """A take script's call, and what its answer is read against."""

    command: bytes
    stamp: float  # the time it records its messages unacked with (their index score)
    unrecorded: frozenset[str]  # the queues consumed with no_ack when it went out


class Takes:
    """The consuming side of one ``redis://`` channel: its takes, and the state they are read against.

    Composed into the channel (``channel.takes``); the channel's kombu hooks
    (``_brpop_start``, ``_brpop_read``, ``_poll_error``) and the poller call
    it. What it reads of kombu's channel it reads through :attr:`channel`.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.unrecorded: set[str] = set()  # queues consumed with no_ack (remote control's replies)
        self.held_by_script: str | None = None  # the tag being delivered, recorded unacked by the take
        self.found_last_time = True  # look before the first wait
        self.queued: Take | None = None  # the take behind the wait in flight (brpop_start)
        self._shas: dict[str, str] = {}
        self._take_cache: tuple[tuple, tuple[bytes, bytes]] | None = None  # see _take_parts

    def brpop_start(self, timeout: float | None = None) -> None:
        """Wait for a wake token, with a take of one message queued behind the wait on the same
        connection: Redis runs it the moment the wait ends (a client's commands run in order) and
        both answers come back together -- a round trip less between a message's arrival and its
        run. One, because until the consumer reads the answer that message is held here, as kombu's
        own BRPOP holds the one it pops: if this process is busy meanwhile (a ``-P solo`` worker
        running a task), no other consumer can take it. Not when a wait can outlast
        :meth:`stale_after` (a short visibility timeout): what it took would always go back.
        (While looks find messages, the channel's poller takes batches without waiting.)"""
        channel = self.channel
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues:
            return
        connection = channel._in_poll = channel.client.connection
        channel._brpop_sent_at = monotonic()
        wait = timeout or channel.brpop_timeout or 1
        wakes = [WAKE_PREFIX + channel._q_for_pri(queue, pri) for pri in channel.priority_steps for queue in queues]
        commands = [resp("BRPOP", *wakes, wait)]
        take = self.take_command(most=1) if float(wait) < self.stale_after() else None
        self.queued = None
        if take is not None:
            commands.append(take.command)
            self.queued = take
        connection.send_packed_command(commands)

    def brpop_read(self, **options: Any) -> bool:
        """Read the wait's answer and the take's behind it; deliver what it took, or take now."""
        channel = self.channel
        connection = channel.client.connection
        take, self.queued = self.queued, None
        try:
            taken = self._read_answers(connection, take, **options)
            if take is not None and taken is not None:
                return self.deliver_taken(taken, take)
            if channel._closing:  # kombu's close() reads the last wait's reply: take nothing more
                raise Empty()
            return self.take_one()
        finally:
            channel._in_poll = None
            channel._flush_brpop_reauth()

    def _read_answers(self, connection: Any, take: Take | None, **options: Any) -> list | None:
        """Read the wait's answer, then the take's behind it: what the take returned (None: no take
        went out, or Redis lacked its script -- a new or flushed Redis). An error answer to the wait
        (UNBLOCKED, WRONGTYPE) is raised once what the take behind it took is back in its list; any
        other failure drops the connection, so no answer is left unread on it."""
        try:
            try:
                self.channel.client.parse_response(connection, "BRPOP", **options)
            except ResponseError:
                if take is not None:
                    self._settle_take(connection, take)
                raise
            return None if take is None else connection.read_response()
        except NoScriptError:  # only the take's answer can be this one
            return None
        except ResponseError:  # an answer, read: the connection is in step
            raise
        except BaseException:
            connection.disconnect()
            raise

    def _settle_take(self, connection: Any, take: Take) -> None:
        """Read the answer of a take whose wait failed and put back what it took."""
        try:
            taken = connection.read_response()
        except ResponseError:
            return  # it took nothing (NOSCRIPT, READONLY on a demoted master)
        if taken:
            self.give_back(taken, take)

    def drop_wait(self, type: str) -> bool:
        """After a socket error, kombu reads one answer; a wait with a take behind it owes two. Drop
        the connection instead (what the take recorded comes back with the visibility timeout) and
        say so (True); False: kombu's way is right."""
        if type == "BRPOP" and self.queued is not None:
            self.queued = None
            self.channel.client.connection.disconnect()
            self.channel._in_poll = None
            return True
        return False

    def forget_queued(self, connection: Any) -> None:
        """``connection`` is gone: so is the answer of a take queued behind a wait on it."""
        if connection is self.channel._in_poll:
            self.queued = None

    def may_take_ahead(self) -> bool:
        """Should the poller take at once, without waiting? When the last look found messages, this
        channel consumes, has prefetch room, and no wait of its own is in flight."""
        channel = self.channel
        return (self.found_last_time and not channel._in_poll and not channel._closing
                and bool(channel.active_queues) and channel.qos.can_consume())

    def _queue_of(self, key: str) -> str:
        """The queue a list key belongs to (kombu's ``<queue><sep><priority>``, or the bare name)."""
        return key.rsplit(self.channel.sep, 1)[0]

    def stale_after(self) -> float:
        """Seconds after which a take's answer read late is not delivered. A sixth of the visibility
        timeout: its unacked records carry the take's stamp, and the keeper refreshes them every
        third of it once delivered, so even with one of the keeper's rounds failing the records
        are refreshed before a restore sweep could give them to another consumer."""
        return float(self.channel.visibility_timeout) / 6

    def take_command(self, most: int = TAKE_BATCH) -> Take | None:
        """The take script's call for up to ``most`` messages, as many as the prefetch window has
        room for (None: no room): it pops them from this channel's lists in order and records each
        unacked with the stamp it carries, except from the queues consumed with no_ack."""
        room = self.channel.qos.can_consume_max_estimate()  # None: no prefetch limit
        want = most if room is None else min(most, room)
        if want < 1:
            return None
        head, flags = self._take_parts()
        stamp = time()
        command = head + bulk_strings(repr(stamp), want) + flags
        return Take(command, stamp, frozenset(self.unrecorded))

    def _take_parts(self) -> tuple[bytes, bytes]:
        """The parts of the take script's call that change only with the consumed queues: the RESP of
        ``EVALSHA`` up to its keys, and of the no_ack flags after its stamp and count. Kept while the
        queues stay the same: a worker with a window of one builds a call per task, and the keys
        (every queue at every priority step) were most of its cost."""
        channel = self.channel
        queues, unrecorded = tuple(channel.active_queues), tuple(self.unrecorded)
        if self._take_cache is not None and self._take_cache[0] == (queues, unrecorded):
            return self._take_cache[1]
        keys = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps for queue in queues]
        flags = ([int(queue in unrecorded) for pri in channel.priority_steps for queue in queues]
                 if unrecorded else [])  # none (a worker's task queues): every take is recorded
        keys += [channel.unacked_key, channel.unacked_index_key]
        size = 3 + len(keys) + 2 + len(flags)  # the call's parts: its name, sha, key count, keys, stamp, count, flags
        parts = (b"*%d\r\n" % size + bulk_strings("EVALSHA", self._sha(POP_SCRIPT), len(keys), *keys),
                 bulk_strings(*flags))
        self._take_cache = ((queues, unrecorded), parts)
        return parts

    def take_one(self) -> bool:
        """Take as many messages as the prefetch window allows (one round trip) and deliver them."""
        take = self.take_command()
        if take is None:
            raise Empty()
        return self.deliver_taken(self._eval(POP_SCRIPT, take.command))

    def deliver_taken(self, taken: list, waited: Take | None = None) -> bool:
        """Deliver what a take returned (``(list, message, tag)`` triples); raise Empty if nothing.

        ``waited``: the take went out behind a wait, and things may have changed before its answer
        was read. What can no longer be delivered goes back to its list (:meth:`give_back`): all of
        it when the channel is closing, or when the answer is read more than :meth:`stale_after`
        seconds after the take's stamp (another consumer may hold those messages now: a restore
        sweep goes by the stamp); a message whose queue is no longer consumed, or consumed with or
        without no_ack unlike when the take went out; one the prefetch window has no room for any
        more (it shrank: an eta task came due)."""
        channel = self.channel
        self.found_last_time = bool(taken)
        stale = waited is not None and (channel._closing or max(
            time() - waited.stamp, monotonic() - channel._brpop_sent_at) > self.stale_after())
        # read once for the loop: kombu and the channel's hooks change these in place, never replace them
        sep, active, unrecorded = channel.sep, channel._active_queues, self.unrecorded
        rotate, deliver = channel._queue_cycle.rotate, channel.connection._deliver
        returned: list = []
        delivered = False
        for index in range(0, len(taken), 3):
            key, raw, tag = bytes_to_str(taken[index]), taken[index + 1], taken[index + 2]
            queue = key.rsplit(sep, 1)[0]  # _queue_of, inlined
            if waited is not None and (
                    stale or queue not in active
                    or (queue in waited.unrecorded) != (queue in unrecorded)
                    or not (queue in unrecorded or channel.qos.can_consume())):
                returned += taken[index:index + 3]
                continue
            payload = None if tag is None else self._kombu_message(raw, bytes_to_str(tag))
            if payload is None:
                self._set_aside(key, raw, tag)
                continue
            rotate(queue)
            self.held_by_script = payload["properties"]["delivery_tag"]
            try:
                deliver(payload, queue)
            finally:
                self.held_by_script = None
            delivered = True
        if returned and waited is not None:
            self.give_back(returned, waited)
        if not delivered:
            raise Empty()
        return True

    def give_back(self, taken: list, take: Take) -> None:
        """Put what ``take`` took back at the head of its lists, unchanged (never delivered, so not
        marked redelivered), and drop its unacked records -- each only while its record is still
        the take's own: a restore sweep may have put it back already, and another consumer taken it
        again under the same tag (``GIVE_BACK_SCRIPT``)."""
        channel = self.channel
        args: list = [take.stamp]
        for index in range(len(taken) - 3, -1, -3):  # last taken first, so the first ends up next
            key, raw, tag = taken[index], taken[index + 1], taken[index + 2]
            recorded = tag is not None and self._queue_of(bytes_to_str(key)) not in take.unrecorded
            args += [key, raw, tag if recorded else b"", int(recorded)]
        with channel.conn_or_acquire() as client:
            returned = channel.script(client, GIVE_BACK_SCRIPT)(
                keys=[channel.unacked_key, channel.unacked_index_key], args=args)
        if returned < len(taken) // 3:  # restored by a sweep: in its list, or with another consumer
            logger.info("redis:// %d taken message(s) had already been restored to their list by another "
                        "consumer; not put back again", len(taken) // 3 - returned)

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
                self.channel.decode_body(payload["body"], properties.get("body_encoding"))  # as kombu's Message
            return payload
        except Exception:
            return None

    def _set_aside(self, key: str, raw: bytes, tag: bytes | None) -> None:
        """A list entry that is not a kombu message cannot be refused like one: move its bytes to
        ``DEAD_LIST``, and drop the unacked record the take script made for it, if any."""
        logger.error("redis:// list %r held a message that is not kombu JSON; moved to %r: %.200r",
                     key, DEAD_LIST, raw)
        channel = self.channel
        channel.raw.call(resp("LPUSH", DEAD_LIST, raw), 1)  # kept first: if Redis refuses it, the record stays
        if tag is not None:
            channel.raw.call(resp("ZREM", channel.unacked_index_key, tag) + resp("HDEL", channel.unacked_key, tag), 2)

    def _sha(self, source: str) -> str:
        """The SHA-1 ``EVALSHA`` names ``source`` by."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        return sha

    def _eval(self, source: str, command: bytes) -> Any:
        """Run ``command`` (an ``EVALSHA`` of ``source``) on the channel's raw connection, loading the
        script first when Redis does not know it."""
        raw = self.channel.raw
        try:
            return raw.call(command, 1)[0]
        except NoScriptError:  # a new or flushed Redis
            pass
        return raw.call(resp("SCRIPT", "LOAD", source) + command, 2)[1]
