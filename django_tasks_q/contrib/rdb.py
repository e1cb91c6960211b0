"""Remote debugging of a task running on a worker: pdb over a plain TCP socket.

A worker has no terminal -- its stdin is not yours, and in the prefork pool the
task runs in a child process -- so the ordinary ``breakpoint()`` cannot reach
you. Instead, call ``set_trace()`` inside the task::

    from django_tasks_q.contrib import rdb

    @task
    def debugged():
        x = 1
        rdb.set_trace()
        return x + 1

The worker logs a WARNING with the address and a one-time token, e.g.
``Remote debugger waiting on 127.0.0.1:6900 for task <id> (telnet 127.0.0.1
6900), token: Xq3...``, and blocks that worker slot until someone connects
and types the token at the ``token:`` prompt; ``continue`` (``c``) detaches,
closes the socket and lets the task finish.

Why a token: whoever gets the prompt runs code as the worker's user, and a
port on 127.0.0.1 is open to every local user (and the ports are
predictable). The token is random (128 bits), made for this one session and
shown only in the worker's log, so only who can read that log gets a shell.
A client that sends a wrong token, or none within :data:`TOKEN_TIMEOUT`
seconds, is disconnected (and logged) and the debugger waits for the next.

Settings come from the environment, read at each call so a running site can
be pointed elsewhere without code changes:

* ``TASKS_Q_RDB_HOST`` -- address to listen on, default ``127.0.0.1``; keep
  it on loopback: the session itself is not encrypted.
* ``TASKS_Q_RDB_PORT`` -- first port to try, default ``6899``; the next
  ``PORT_RANGE - 1`` are tried in order when it is busy, so several tasks can
  wait at once.

``PYTHONBREAKPOINT=django_tasks_q.contrib.rdb.set_trace`` makes the builtin
``breakpoint()`` use it.
"""

from __future__ import annotations

import errno
import hmac
import io
import logging
import os
import pdb
import secrets
import socket
import sys
import threading
from types import FrameType
from typing import BinaryIO, TextIO, cast

from django_tasks_q.core import context

__all__ = ["Rdb", "debugger", "set_trace", "DEFAULT_HOST", "DEFAULT_PORT", "PORT_RANGE", "TOKEN_TIMEOUT"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6899
#: how many consecutive ports are tried, starting at TASKS_Q_RDB_PORT
PORT_RANGE = 100
#: seconds a client has to type the token before it is disconnected
TOKEN_TIMEOUT = 60.0

_local = threading.local()  # .current: this thread's attached Rdb, reused by nested set_trace() calls


class Rdb(pdb.Pdb):
    """A ``pdb.Pdb`` whose stdin and stdout are one accepted TCP connection.

    Constructing it binds a port, announces it in the worker log and blocks
    until a client connects: a debugger nobody can reach would be useless, and
    the task must not run on before someone is looking.
    """

    def __init__(self, host: str | None = None, port: int | None = None, port_range: int = PORT_RANGE) -> None:
        host = host or os.environ.get("TASKS_Q_RDB_HOST") or DEFAULT_HOST
        first = port if port is not None else int(os.environ.get("TASKS_Q_RDB_PORT") or DEFAULT_PORT)
        listener, self.port = _listen(host, first, port_range)
        self.host = host
        task_id = context.current().id
        where = f"task {task_id}" if task_id else "a process outside any task"
        token = secrets.token_urlsafe(16)
        logger.warning("Remote debugger waiting on %s:%s for %s (telnet %s %s), token: %s",
                       host, self.port, where, host, self.port, token)
        with listener:
            self._conn, peer = _accept(listener, token)
        logger.info("Remote debugger on %s:%s: client %s:%s connected", host, self.port, *peer[:2])
        # line buffering: pdb prints without flushing, and the client must see each line as it is written
        stream = cast(BinaryIO, self._conn.makefile("rwb"))  # a BufferedRWPair, which typeshed will not wrap
        file = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", line_buffering=True)
        self._file: TextIO | None = file
        # nosigint: pdb's Ctrl-C handler would replace the worker's own signal handling (and fails off the
        # main thread); readrc: a .pdbrc in the worker's directory is not for this session
        super().__init__(stdin=file, stdout=file, nosigint=True, readrc=False)
        self.prompt = "(Pdb) "
        _local.current = self

    @property
    def attached(self) -> bool:
        return self._file is not None

    def detach(self) -> None:
        """Close the connection; the task then runs on untraced."""
        if self._file is None:
            return
        file, self._file = self._file, None
        for close in (file.close, self._conn.close):
            try:
                close()
            except OSError:  # the client already hung up: nothing left to flush
                pass
        if getattr(_local, "current", None) is self:
            _local.current = None
        logger.info("Remote debugger on %s:%s closed", self.host, self.port)

    def do_continue(self, arg: str) -> bool | None:
        """Detach after continuing, so the worker slot is freed and the task completes normally."""
        stop = super().do_continue(arg)
        self.detach()
        return stop

    do_c = do_cont = do_continue

    def do_EOF(self, arg: str) -> bool | None:
        """The client hung up: continue rather than abort the task (pdb's default is quit)."""
        return self.do_continue(arg)

    def set_quit(self) -> None:
        """``quit`` detaches too; the task then fails with ``bdb.BdbQuit``, as under plain pdb."""
        self.detach()
        super().set_quit()


def _accept(listener: socket.socket, token: str) -> tuple[socket.socket, tuple]:
    """The first connection that types ``token``; the others are told so, closed and logged."""
    expected = token.encode()
    while True:
        conn, peer = listener.accept()
        try:
            conn.settimeout(TOKEN_TIMEOUT)
            conn.sendall(b"token: ")
            given = _read_line(conn)
            if hmac.compare_digest(given, expected):
                conn.settimeout(None)
                return conn, peer
            conn.sendall(b"wrong token\n")
            why = "a wrong token"
        except (OSError, socket.timeout) as exc:
            why = f"no token ({type(exc).__name__})"
        conn.close()
        logger.warning("Remote debugger refused a client from %s:%s: %s", *peer[:2], why)


def _read_line(conn: socket.socket, limit: int = 256) -> bytes:
    """One line from ``conn`` (without CR/LF), at most ``limit`` bytes."""
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.strip(b"\r\n \t")


def _listen(host: str, first: int, count: int) -> tuple[socket.socket, int]:
    """A listening socket on the first free port of ``first .. first + count - 1``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(first, first + count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        # SO_REUSEADDR: a port left in TIME_WAIT by the last session is free again; one that is
        # listening still fails to bind, and is skipped
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return sock, port
    raise OSError(errno.EADDRINUSE, f"no free port for the remote debugger on {host} in {first}..{first + count - 1}"
                  " (set TASKS_Q_RDB_PORT to another range)")


def debugger() -> Rdb:
    """This thread's attached debugger, or a new one (which waits for a client to connect)."""
    current: Rdb | None = getattr(_local, "current", None)
    return current if current is not None and current.attached else Rdb()


def set_trace(frame: FrameType | None = None) -> None:
    """Break into the remote debugger at the caller's frame (or ``frame``)."""
    debugger().set_trace(frame or sys._getframe().f_back)
