"""Run ``taskworker`` as a service: ``--detach``, ``--pidfile``, ``--logfile``.

``prepare()`` is called first thing in ``taskworker``'s ``handle()``, before
the ``Worker`` is built, so no broker or database connection exists yet when
the process forks (a connection shared across a fork is corrupted by
whichever side uses it second).

Detaching is the classic double fork: the first child calls ``setsid()`` to
leave the terminal's session, the second can never reacquire a terminal.
The working directory and umask are kept (relative paths and file modes mean
what the user expects). The command that detached waits, through a pipe,
until the daemon has written its pidfile, so when it returns 0 the pidfile
already names a live process -- ``taskmulti`` and init scripts rely on that.

A pidfile naming a live process refuses the start; one naming a dead process
(left by ``kill -9`` or a crash) is replaced. The daemon removes its pidfile
when it exits, if the file still names it.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError


def read_pid(pidfile: str | os.PathLike) -> int | None:
    """The pid in ``pidfile``, or None when there is no file or it holds no pid."""
    try:
        return int(Path(pidfile).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process.

    A zombie counts as dead: a daemon's parent is init, and in containers
    the process at pid 1 does not always reap, so ``kill(pid, 0)`` alone
    would report an exited worker as running forever.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill()
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def live_pid(pidfile: str | os.PathLike) -> int | None:
    """The pid in ``pidfile`` when that process is alive, else None."""
    pid = read_pid(pidfile)
    return pid if pid is not None and pid_alive(pid) else None


def check_pidfile(pidfile: str | os.PathLike) -> None:
    """Refuse to start a second worker on the same pidfile."""
    pid = live_pid(pidfile)
    if pid is not None:
        raise CommandError(f"pidfile {pidfile} names a running process (pid {pid}); "
                           f"stop it first, or remove the file if that process is not a worker")


def write_pidfile(pidfile: str | os.PathLike) -> None:
    """Create ``pidfile`` with this process's pid, atomically; remove it at exit.

    ``O_EXCL`` makes two workers started at once on one pidfile race safely:
    exactly one creates it. A stale file is removed and the creation retried.
    """
    path = Path(pidfile)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            check_pidfile(path)
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        atexit.register(_remove_pidfile, path, os.getpid())
        return
    raise CommandError(f"could not create pidfile {pidfile}")


def _remove_pidfile(path: Path, owner: int) -> None:
    # Forked pool processes inherit atexit handlers: only the owner removes the file,
    # and only while the file still names it.
    if os.getpid() == owner and read_pid(path) == owner:
        path.unlink(missing_ok=True)


def redirect_output(logfile: str | os.PathLike | None) -> None:
    """Point file descriptors 1 and 2 at ``logfile`` (appended), or /dev/null.

    Descriptors, not ``sys.stdout``: log handlers created by Django's LOGGING,
    pool child processes and tracebacks of a crash all follow.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    target = os.open(logfile or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)  # a log read with tail -f, not in 8 KB blocks


def detach(pidfile: str | os.PathLike | None, logfile: str | os.PathLike | None) -> None:
    """Double-fork into the background; returns in the daemon only.

    The calling process exits 0 once the daemon has let go of its standard
    streams and written its pidfile, or 1 with the daemon's error message.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:  # the command the user ran: wait for the daemon's word, then leave
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode()
        if report != "ok":
            sys.stderr.write(f"CommandError: {report or 'the worker exited while detaching'}\n")
        sys.stderr.flush()
        os._exit(0 if report == "ok" else 1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    redirect_output(logfile)  # whoever ran us may wait for EOF on the pipes it gave us
    with os.fdopen(write_end, "w") as pipe:
        try:
            if pidfile:
                write_pidfile(pidfile)
        except (CommandError, OSError) as exc:
            pipe.write(str(exc))
            pipe.flush()
            os._exit(1)
        pipe.write("ok")


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def prepare(detach_: bool, pidfile: str | None, logfile: str | None) -> None:
    """Apply ``--detach`` / ``--pidfile`` / ``--logfile`` before the worker exists."""
    if pidfile:
        check_pidfile(pidfile)  # here, while the user still sees stderr
        pidfile = os.path.abspath(pidfile)
        # Until the worker installs its own handlers, SIGTERM exits through
        # atexit (removing the pidfile) instead of dying on the spot.
        signal.signal(signal.SIGTERM, _exit_on_term)
    if logfile:
        logfile = os.path.abspath(logfile)
        try:
            open(logfile, "a").close()  # fail now, on the user's terminal, not in the daemon
        except OSError as exc:
            raise CommandError(f"cannot write the logfile: {exc}") from exc
    if detach_:
        detach(pidfile, logfile)
    else:
        if logfile:
            redirect_output(logfile)
        if pidfile:
            write_pidfile(pidfile)
