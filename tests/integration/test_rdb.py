"""``django_tasks_q.contrib.rdb`` on real workers: pdb over a socket, announced in the worker log.

Each test points the debugger at a port range found free just before (``TASKS_Q_RDB_PORT``), so runs
never collide with one another or with a developer's own session on the default 6899.
"""

from __future__ import annotations

import re
import socket

import pytest

from testproject.videos.tasks import debugged
from tests.workers import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

ANNOUNCED = re.compile(r"Remote debugger waiting on 127\.0\.0\.1:(\d+) for task (\S+) \(telnet 127\.0\.0\.1 (\d+)\), "
                       r"token: (\S+)")


def free_ports(count: int = 2) -> int:
    """A first port with ``count`` free ports from it, well below 65535 so a range of 100 fits."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + 100 < 65536 and all(_free(port) for port in range(first, first + count)):
            return first


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def announced_port(worker: WorkerProcess, task_id: str) -> tuple[int, str]:
    """The port and the one-time token the worker logged."""
    worker.wait_for("Remote debugger waiting on", timeout=20)
    match = ANNOUNCED.search(worker.output())
    assert match, worker.output()
    assert match.group(2) == task_id and match.group(1) == match.group(3)
    return int(match.group(1)), match.group(4)


def read_until(conn: socket.socket, marker: bytes = b"(Pdb) ") -> str:
    data = b""
    while not data.endswith(marker):
        chunk = conn.recv(4096)
        assert chunk, f"debugger closed the connection; got {data!r}"
        data += chunk
    return data.decode()


def debug_session(port: int, token: str) -> None:
    """What a user does over telnet: type the token, look at ``x``, then continue."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        assert read_until(conn, b"token: ") == "token: "
        conn.sendall(token.encode() + b"\r\n")
        assert "return x + 1" in read_until(conn)  # stopped on the line after set_trace()
        conn.sendall(b"p x\r\n")  # telnet sends CRLF
        assert read_until(conn).splitlines()[0] == "1"
        conn.sendall(b"c\n")
        assert conn.recv(4096) == b""  # continue detaches: the worker closes the socket


@pytest.mark.parametrize("pool", ["solo", "threads", "prefork"])
def test_set_trace_serves_pdb_over_a_socket_then_the_task_completes(pool):
    first = free_ports()
    with WorkerProcess("django://", "-P", pool, "-c", "1", "-n", f"rdb-{pool}@%h",
                       env={"TASKS_Q_RDB_PORT": str(first)}) as worker:
        result = debugged.delay()
        port, token = announced_port(worker, result.id)
        assert port == first
        assert not result.ready()  # the task waits on the debugger
        debug_session(port, token)
        assert result.get(timeout=20) == 2
        worker.wait_for(f"Remote debugger on 127.0.0.1:{port} closed")


def test_a_busy_port_is_skipped():
    first = free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen(1)
        with WorkerProcess("django://", "-P", "solo", "-c", "1", "-n", "rdb@%h",
                           env={"TASKS_Q_RDB_HOST": "127.0.0.1", "TASKS_Q_RDB_PORT": str(first)}) as worker:
            result = debugged.delay()
            port, token = announced_port(worker, result.id)
            assert port == first + 1
            debug_session(port, token)
            assert result.get(timeout=20) == 2


def test_a_client_without_the_token_gets_no_prompt():
    """Any local user can reach 127.0.0.1: without the token logged by the worker, no shell."""
    first = free_ports()
    with WorkerProcess("django://", "-P", "solo", "-c", "1", "-n", "rdb-token@%h",
                       env={"TASKS_Q_RDB_PORT": str(first)}) as worker:
        result = debugged.delay()
        port, token = announced_port(worker, result.id)
        for attempt in (b"p __import__('os').getpid()\n", b"not-the-token\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
                conn.sendall(attempt)
                received = b""
                while chunk := conn.recv(4096):
                    received += chunk
            assert received == b"token: wrong token\n"  # then the worker hung up: no (Pdb) prompt
        worker.wait_for("Remote debugger refused a client from 127.0.0.1")
        assert not result.ready()  # still waiting for the one who has the token
        debug_session(port, token)
        assert result.get(timeout=20) == 2
