"""Real Redis, RabbitMQ and PostgreSQL servers for the test session.

Each server runs from a private temporary directory on free 127.0.0.1 ports,
so the suite never touches (or depends on) a system-wide service and two test
sessions on one machine do not collide.  ``tests/conftest.py`` turns these
classes into session fixtures through :func:`serve`.

When a binary is missing or a server does not come up, the tests that need it
fail with the server's name and the tail of its log; they never skip.

Every process is stopped by the PID this module started (or, for PostgreSQL,
the postmaster PID its data directory records), never by name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HOST = "127.0.0.1"

#: (server name, seconds it took to start) for every server started this session.
STARTUP_TIMES: list[tuple[str, float]] = []


class ServerUnavailable(Exception):
    """The binary is missing or the server did not start; ``log`` is its tail."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.message = message
        self.log = log


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def tail(path: str | os.PathLike | None, lines: int = 40) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the process group of a child started with
    ``start_new_session=True`` (so its group id is its own PID)."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    # The leader is gone; take down anything it left in its group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class Server:
    name = "server"

    def __init__(self) -> None:
        self.tmpdir: str | None = None
        self.url: str | None = None
        self.log_path: str | None = None
        self.startup_seconds: float | None = None

    def start(self) -> str:
        self.tmpdir = tempfile.mkdtemp(prefix=f"tasks-q-{self.name}-")
        began = time.monotonic()
        self._start()
        self.startup_seconds = time.monotonic() - began
        STARTUP_TIMES.append((self.name, self.startup_seconds))
        assert self.url
        return self.url

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _unavailable(self, message: str, extra_log: str = "") -> ServerUnavailable:
        return ServerUnavailable(message, extra_log or tail(self.log_path))


# --------------------------------------------------------------------------
# Redis


class RedisServer(Server):
    name = "redis"

    def __init__(self, binary: str | None = None, appendonly: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.binary = binary
        self.appendonly = appendonly  # fsync every write, so a crash (kill) loses nothing
        self.extra_args = extra_args  # more redis-server options, e.g. ("--rename-command", "CLIENT", "")
        self.proc: subprocess.Popen | None = None
        self.argv: list[str] = []

    def _find_binary(self) -> str:
        for candidate in (
            self.binary,
            os.environ.get("TASKS_Q_REDIS_SERVER"),
            shutil.which("redis-server"),
            "/usr/bin/redis-server",
        ):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
        raise ServerUnavailable("redis-server not found (apt-get install redis-server)")

    def _start(self) -> None:
        binary = self._find_binary()
        port = free_port()
        self.log_path = os.path.join(self.tmpdir, "redis.log")
        self.argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--dir", self.tmpdir,
                     "--daemonize", "no", "--logfile", ""]
        self.argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.argv += self.extra_args
        self._spawn(port)

    def crash(self) -> None:
        """SIGKILL the server, as a crash or an OOM kill would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def start_again(self) -> None:
        """Start the server again on the same port and directory (with ``appendonly``, with its data)."""
        self._spawn(urlsplit(self.url).port)

    def _spawn(self, port: int) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._unavailable(f"redis-server exited with status {self.proc.returncode}")
            if self._ping(port):
                self.url = f"redis://{HOST}:{port}/0"
                return
            time.sleep(0.05)
        raise self._unavailable("redis-server did not answer PING within 20 s")

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _stop(self) -> None:
        _stop_process(self.proc)


# --------------------------------------------------------------------------
# RabbitMQ


def _rabbitmq_sbin() -> str:
    """The directory holding the real rabbitmq-server script (with its
    rabbitmq-env beside it).  Debian's /usr/sbin/rabbitmq-server is a wrapper
    that ``su``s to the rabbitmq user and resets HOME, so it is skipped."""
    candidates = [os.environ.get("TASKS_Q_RABBITMQ_SBIN"), "/usr/lib/rabbitmq/bin"]
    found = shutil.which("rabbitmq-server")
    if found:
        candidates.append(os.path.dirname(os.path.realpath(found)))
    candidates += sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"), reverse=True)
    for directory in candidates:
        if directory and all(
            os.access(os.path.join(directory, name), os.X_OK)
            for name in ("rabbitmq-server", "rabbitmqctl", "rabbitmq-diagnostics")
        ) and os.path.exists(os.path.join(directory, "rabbitmq-env")):
            return directory
    raise ServerUnavailable("rabbitmq-server not found (apt-get install rabbitmq-server)")


def _epmd_binary() -> str:
    for candidate in [shutil.which("epmd"), *sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"), reverse=True)]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerUnavailable("epmd (Erlang) not found (apt-get install rabbitmq-server)")


def _port_below(limit: int) -> int:
    """A free port whose +10 neighbours stay valid port numbers."""
    for _ in range(100):
        port = free_port()
        if port < limit:
            return port
    raise ServerUnavailable(f"no free port below {limit}")


class RabbitMQServer(Server):
    name = "amqp"

    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None
        self.env: dict[str, str] | None = None
        self.sbin: str | None = None

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl ARGS`` against this node (a test sets a policy, say); raises with its output on failure."""
        done = self._cli("rabbitmqctl", "-q", *args)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stdout} {done.stderr}")
        return done.stdout

    def _cli(self, tool: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(self.sbin, tool), *args],
            env=self.env,
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _start(self) -> None:
        self.sbin = _rabbitmq_sbin()
        epmd = _epmd_binary()
        tmp = Path(self.tmpdir)
        amqp_port, epmd_port = free_port(), free_port()
        dist_port, ctl_dist_port = _port_below(65000), _port_below(65000)
        (tmp / "mnesia").mkdir()
        (tmp / "log").mkdir()
        (tmp / "rabbitmq.conf").write_text(
            # guest may log in from loopback only (the default, spelled out).
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 10MB\n"
            "log.file.level = info\n"
            "log.console = false\n"
        )
        (tmp / "enabled_plugins").write_text("[].\n")
        (tmp / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        node = f"rabbit-test-{amqp_port}@localhost"
        self.env = {
            **os.environ,
            "HOME": str(tmp),  # the Erlang cookie lives here
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_dist_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_dist_port + 10),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"),
            "RABBITMQ_LOG_BASE": str(tmp / "log"),
            "RABBITMQ_PID_FILE": str(tmp / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(tmp / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(tmp / "rabbitmq-env.conf"),
            # epmd is ours (below); the node must not spawn a detached one.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
        }
        for key in ("RABBITMQ_ENABLED_PLUGINS", "RABBITMQ_LOGS", "RABBITMQ_ALLOW_INPUT", "RABBITMQ_NODE_ONLY"):
            self.env.pop(key, None)

        # Our own epmd, in the foreground, so we hold its PID.
        self.log_path = str(tmp / "epmd.log")
        with open(self.log_path, "wb") as log:
            self.epmd = subprocess.Popen(
                [epmd, "-port", str(epmd_port), "-address", HOST],
                env=self.env,
                cwd=self.tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not port_open(epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise self._unavailable("epmd did not start")
            time.sleep(0.05)

        self.node = node
        self.amqp_port = amqp_port
        self._start_node()
        self.url = f"amqp://guest:guest@{HOST}:{amqp_port}//"

    def crash(self) -> None:
        """SIGKILL the node (not epmd), as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def start_again(self) -> None:
        """Start the node again: same name, port and data directory."""
        self._start_node()

    def _start_node(self) -> None:
        tmp, node, amqp_port = Path(self.tmpdir), self.node, self.amqp_port
        self.log_path = str(tmp / "startup.log")
        node_log = tmp / "log" / f"{node}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [os.path.join(self.sbin, "rabbitmq-server")],
                env=self.env,
                cwd=self.tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def failure(message: str) -> ServerUnavailable:
            return ServerUnavailable(
                message, f"--- startup output ---\n{tail(self.log_path)}\n--- {node_log.name} ---\n{tail(node_log)}"
            )

        deadline = time.monotonic() + 120
        # The AMQP listener opens at the end of boot ...
        while not port_open(amqp_port):
            if self.proc.poll() is not None:
                raise failure(f"rabbitmq-server exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise failure("RabbitMQ did not open its AMQP port within 120 s")
            time.sleep(0.2)
        # ... and the node must answer its CLI (same env, same cookie).
        while True:
            try:
                ping = self._cli("rabbitmq-diagnostics", "-q", "ping", timeout=30)
            except subprocess.TimeoutExpired:
                ping = None
            if ping is not None and ping.returncode == 0:
                break
            if self.proc.poll() is not None:
                raise failure(f"rabbitmq-server exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                out = "" if ping is None else (ping.stdout + ping.stderr)
                raise failure(f"rabbitmq-diagnostics ping did not succeed within 120 s: {out.strip()[-500:]}")
            time.sleep(0.5)

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._cli("rabbitmqctl", "-q", "shutdown", timeout=60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        _stop_process(self.proc)
        _stop_process(self.epmd, timeout=5)


# --------------------------------------------------------------------------
# PostgreSQL


def _postgres_bindir() -> str:
    candidates = [os.environ.get("TASKS_Q_PG_BINDIR")]
    found = shutil.which("initdb")
    if found:
        candidates += [os.path.dirname(found), os.path.dirname(os.path.realpath(found))]
    candidates += ["/usr/lib/postgresql/15/bin"]
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
                         reverse=True)
    for directory in candidates:
        if directory and all(os.access(os.path.join(directory, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise ServerUnavailable("PostgreSQL initdb/pg_ctl/postgres not found (apt-get install postgresql)")


def _unprivileged_user() -> pwd.struct_passwd | None:
    """None when not root; otherwise the user to run initdb/postgres as
    (``postgres`` if it exists, else a system user created for the purpose)."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("TASKS_Q_PG_USER"), "postgres", "tasks-q-pg"):
        if name:
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
         "tasks-q-pg"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ServerUnavailable("cannot create an unprivileged user for PostgreSQL", result.stdout + result.stderr)
    return pwd.getpwnam("tasks-q-pg")


class PostgresServer(Server):
    name = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.bindir: str | None = None
        self.user: pwd.struct_passwd | None = None
        self.datadir: str | None = None
        self.postmaster_pid: int | None = None

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C", "HOME": self.tmpdir, "PGHOST": self.tmpdir}
        return subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            env=env,
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def _start(self) -> None:
        self.bindir = _postgres_bindir()
        self.user = _unprivileged_user()
        if self.user is not None:
            os.chown(self.tmpdir, self.user.pw_uid, self.user.pw_gid)
        self.datadir = os.path.join(self.tmpdir, "data")
        self.log_path = os.path.join(self.tmpdir, "postgres.log")
        port = free_port()

        init = self._run("initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
                         "--encoding=UTF8", "--no-locale", "--no-sync")
        if init.returncode != 0:
            raise self._unavailable("initdb failed", init.stdout + init.stderr)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as conf:
            conf.write(
                "\n# tasks-q test cluster\n"
                f"listen_addresses = '{HOST}'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{self.tmpdir}'\n"
                "max_connections = 200\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "logging_collector = off\n"
            )
        start = self._run("pg_ctl", "-D", self.datadir, "-l", self.log_path, "-w", "-t", "60", "start", timeout=90)
        self._read_postmaster_pid()
        if start.returncode != 0:
            raise self._unavailable(
                f"pg_ctl start failed with status {start.returncode}",
                f"{start.stdout}{start.stderr}\n--- postgres.log ---\n{tail(self.log_path)}",
            )
        self.url = f"postgres://postgres@{HOST}:{port}/postgres"

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every backend quits at once, no checkpoint, as in a crash."""
        result = self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "-t", "30", "stop", timeout=45)
        if result.returncode != 0:
            raise self._unavailable("pg_ctl stop -m immediate failed", result.stdout + result.stderr)

    def start_again(self) -> None:
        """Start the cluster again on the same port and data directory (it recovers from its WAL)."""
        start = self._run("pg_ctl", "-D", self.datadir, "-l", self.log_path, "-w", "-t", "60", "start", timeout=90)
        self._read_postmaster_pid()
        if start.returncode != 0:
            raise self._unavailable("pg_ctl start failed", start.stdout + start.stderr)

    def _read_postmaster_pid(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.postmaster_pid = int(Path(self.datadir, "postmaster.pid").read_text().split()[0])

    def _stop(self) -> None:
        if self.datadir is None or self.bindir is None:
            return
        self._read_postmaster_pid()
        if self.postmaster_pid is None:
            return
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", "30", "stop", timeout=45)
        # If pg_ctl could not stop it, the postmaster we started goes the hard way
        # (its backends exit by themselves once the postmaster is gone).
        for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL):
            if not _alive(self.postmaster_pid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.postmaster_pid, sig)
            for _ in range(50):
                if not _alive(self.postmaster_pid):
                    break
                time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_database(postgres_url: str, name: str) -> str:
    """Create a fresh, empty database ``name`` (dropping one of that name) on the
    server of ``postgres_url``; return the URL that points at it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(postgres_url)
    return urlunsplit(parts._replace(path="/" + name))


# --------------------------------------------------------------------------
# Fixture glue


@contextlib.contextmanager
def serve(server: Server) -> Iterator[str]:
    """Start ``server``, yield its URL, stop it on the way out -- also when the
    start failed half-way.  A server that cannot start fails the tests that
    need it, with the log tail: they never skip (``make test`` installs the
    servers; run ``pytest -m "not amqp"`` to leave a server's tests out)."""
    try:
        message = None
        try:
            url = server.start()
        except ServerUnavailable as exc:
            message = f"{server.name} server unavailable: {exc.message}"
            if exc.log:
                message += f"\n--- log tail ---\n{exc.log}"
        except Exception as exc:  # e.g. a subprocess timeout: same policy
            message = f"{server.name} server failed to start: {exc!r}\n--- log tail ---\n{tail(server.log_path)}"
        if message is not None:  # raised outside the except blocks: no chained traceback
            import pytest  # here, so that bench/run.py can use the server classes without pytest

            pytest.fail(message, pytrace=False)
        RUNNING[url] = server
        yield url
    finally:
        RUNNING.pop(getattr(server, "url", None) or "", None)
        server.stop()


#: The servers ``serve`` runs now, by URL: a test that needs more than the URL (a RabbitMQ policy) finds
#: the session's server here.
RUNNING: dict[str, Server] = {}
