"""The ``redis://`` channel's own Redis connection: raw RESP writes, and early acks without a reply.

The consumer's hot path -- a take, an ack, a bulk send -- goes through
:meth:`RawConnection.call` on one connection the channel keeps for itself:
redis-py's pooled path (take a connection, health-check it, pack, release)
cost more than the round trip itself. Early acks are written without a
reply (``CLIENT REPLY OFF``) and held by the kernel until the next write
that waits (:func:`held_writes_flag`); :meth:`RawConnection.call` says why.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from .redis_sends import resp

if TYPE_CHECKING:
    from .redis import Channel

#: Early acks go out between these two (``call(wait=False)``): Redis sends no reply to what it receives between.
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


class RawConnection:
    """One channel's connection of its own, made from the channel's client pool on first use."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.connection: Any = None
        self.pending = 0  # replies owed (call(wait=False) where the server keeps replying)
        self._replies_off = False  # the connection is in CLIENT REPLY OFF (quiet writes since)
        self._can_silence: bool | None = None  # does the server take CLIENT REPLY? (asked once per connection)
        self._sock: Any = None  # the socket the reply mode above was set on
        self._hold_flag = 0  # MSG_MORE where the socket takes it (held_writes_flag)

    def call(self, packed: bytes, replies: int, *, wait: bool = True) -> list:
        """Write ``packed`` commands on this channel's own connection and read their ``replies`` replies.

        Used once or twice per task run (take, ack) and once per send. Any
        error (the connection broke, or Redis answered an error) drops the
        connection, so no reply is left unread on it, and is raised; the
        next call reconnects.

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
        (``Worker._done_before``).

        A server that does not take ``CLIENT REPLY`` (some proxies) is asked
        once per connection; there each ``wait=False`` call owes its replies,
        which the next call reads before it writes, so that at most one write
        is ever in flight and a close sends an RST only after Redis answered
        (and so had read) the last write.
        """
        connection = self.connection
        if connection is None:
            with self.channel.conn_or_acquire() as client:
                connection = self.connection = client.connection_pool.make_connection()
        try:
            if connection._sock is None or connection._sock is not self._sock:  # new, or reconnected
                connection.connect()
                self._sock, self.pending, self._replies_off, self._can_silence = connection._sock, 0, False, None
                self._hold_flag = held_writes_flag(connection._sock)
            if not wait and self._silenceable(connection):
                try:
                    connection._sock.sendall(packed if self._replies_off else REPLY_OFF + packed, self._hold_flag)
                except OSError as exc:
                    raise RedisConnectionError(f"redis:// writing an early ack failed: {exc}") from exc
                self._replies_off = True
                return []
            while self.pending:
                self.pending -= 1
                connection.read_response()
            if self._replies_off:  # CLIENT REPLY ON answers OK: read it first
                connection.send_packed_command([REPLY_ON + packed], check_health=False)
                self._replies_off = False
                connection.read_response()
            else:
                connection.send_packed_command([packed], check_health=False)
            if not wait:
                self.pending = replies
                return []
            return [connection.read_response() for _ in range(replies)]
        except BaseException:
            self.close()
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

    def close(self, *, settle: bool = False) -> None:
        """Drop the connection; with ``settle``, first read the replies still owed (a clean close)."""
        connection, self.connection = self.connection, None
        pending, self.pending = self.pending, 0
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
