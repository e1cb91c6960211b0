"""The ``amqp://`` transport: kombu's py-amqp transport, reading the socket ahead.

py-amqp reads a frame in three exact reads (its 7-byte header, its
payload, its end byte), and a task message is three frames (the deliver
method, the content header, the body): nine reads, each a ``poll`` and a
``recv`` on a socket with a timeout, eighteen system calls for one
message. Here each read asks the socket for what it has, up to
:data:`READ_AHEAD` bytes, and keeps the rest in py-amqp's own read buffer,
where its next read looks first: a message that arrived whole costs one
``poll`` and one ``recv``, and a burst of messages fewer still.

Nothing reads the socket but py-amqp's ``_read``: every consumer here
(worker, remote control, event receiver, confirm waits) blocks in
``drain_events``, which reads a frame from the buffer before it waits on
the socket, so no frame waits in the buffer while a reader sleeps.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from amqp import transport as amqp_transport
from kombu.transport import pyamqp

#: Most bytes one read takes from the socket (py-amqp's frames are at most 128 KiB by default).
READ_AHEAD = 65536


class _ReadAhead:
    """``_read`` for py-amqp's TCP and TLS transports: ``n`` bytes, from the buffer first, then from the socket
    as much as it holds (up to :data:`READ_AHEAD`)."""

    _read_buffer: bytes | memoryview
    raise_on_initial_eintr: bool
    #: errors of a read that is tried again, as py-amqp's own transport does (TLS adds ENOENT: SSLWantReadError)
    retried_errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)

    def _quick_recv(self, size: int) -> bytes:  # set per instance by py-amqp when it connects
        raise NotImplementedError

    def _read(self, n: int, initial: bool = False, _errnos: tuple[int, ...] | None = None) -> bytes:
        _errnos = self.retried_errnos if _errnos is None else _errnos
        buffered = self._read_buffer
        try:
            while len(buffered) < n:
                try:
                    chunk = self._quick_recv(max(READ_AHEAD, n - len(buffered)))
                except OSError as exc:
                    if exc.errno not in _errnos:
                        raise
                    if initial and self.raise_on_initial_eintr:
                        raise socket.timeout() from exc
                    continue
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                buffered = bytes(buffered) + chunk  # only once the rest kept is shorter than a frame part
        except BaseException:
            self._read_buffer = buffered  # a timeout mid-frame: the next read goes on from here
            raise
        # the rest is kept as a view, not copied: a burst of small frames is read without copying the
        # buffer's tail once per frame part (py-amqp only ever prepends bytes to it, or reads it through here)
        view = memoryview(buffered)
        self._read_buffer = view[n:]
        return bytes(view[:n])


class TCPTransport(_ReadAhead, amqp_transport.TCPTransport):
    """py-amqp's plain TCP transport, reading ahead."""


class SSLTransport(_ReadAhead, amqp_transport.SSLTransport):
    """py-amqp's TLS transport, reading ahead (a TLS read returns at most one record, 16 KiB)."""

    retried_errnos = (errno.ENOENT, errno.EAGAIN, errno.EINTR)


class Connection(pyamqp.Connection):
    """kombu's py-amqp connection on a transport that reads ahead."""

    def Transport(self, host: str, connect_timeout: float | None, ssl: Any = False,  # noqa: N802 - py-amqp's name
                  read_timeout: float | None = None, write_timeout: float | None = None,
                  socket_settings: Any = None, **kwargs: Any) -> Any:
        """The transport py-amqp's ``connect()`` makes (the one for ``ssl``, same arguments), but ours."""
        return (SSLTransport if ssl else TCPTransport)(
            host, connect_timeout=connect_timeout, ssl=ssl, read_timeout=read_timeout,
            write_timeout=write_timeout, socket_settings=socket_settings, **kwargs)


class Transport(pyamqp.Transport):
    """kombu's ``amqp://`` / ``pyamqp://`` transport with :class:`Connection`."""

    Connection = Connection


class SecureTransport(pyamqp.SSLTransport):
    """kombu's ``amqps://`` transport with :class:`Connection`."""

    Connection = Connection
