"""Shutdowns, prefork children and database connections, with real workers.

Warm shutdown by SIGTERM is also covered in test_worker.py (threads and
solo); here: SIGINT, the cold shutdown's exit on every pool, recycling
children by task count and by memory, and a worker whose PostgreSQL
connections the server killed while it idled.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from django_tasks_q.core.states import TaskState
from django_tasks_q.models import Worker as WorkerRow
from testproject.videos.tasks import first_query, hold_memory, sleep, sleep_late
from tests.workers import WorkerProcess

from .test_health import pg_database  # noqa: F401 (a fixture)
from .test_spine import wait_until


@pytest.fixture
def on_django(settings, transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "django://"}
    return "django://"


def test_sigint_is_a_warm_shutdown_that_finishes_the_task_and_exits_0(on_django):
    worker = WorkerProcess("django://", "-P", "prefork", "-c", "1", "-n", "interrupted@%h").start()
    try:
        result = sleep.delay(1.5)
        wait_until(lambda: result.state == TaskState.STARTED, timeout=15)
        worker.signal(signal.SIGINT)
        assert worker.process.wait(20) == 0
    finally:
        worker.kill()
    assert result.get(timeout=1) == 1.5
    out = worker.output()
    assert "warm shutdown: waiting for 1 running task(s)" in out and "stopped" in out.splitlines()[-1]
    assert WorkerRow.objects.get(hostname__startswith="interrupted@").stopped_at is not None


@pytest.mark.parametrize("pool", ["solo", "threads", "prefork"])
def test_a_second_signal_is_a_cold_shutdown_that_exits_at_once_with_1(on_django, pool):
    worker = WorkerProcess("django://", "-P", pool, "-c", "1").start()
    try:
        result = sleep.delay(30)
        wait_until(lambda: result.state == TaskState.STARTED, timeout=15)
        worker.signal(signal.SIGTERM)
        worker.wait_for("warm shutdown", timeout=10) if pool != "solo" else time.sleep(0.3)
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.process.wait(15)
        took = time.monotonic() - started
    finally:
        worker.kill()
    assert code == 1, worker.output()
    assert took < 10, f"cold shutdown took {took:.1f}s"
    assert result.state == TaskState.STARTED  # abandoned mid-run, not finished


def test_an_acks_late_task_abandoned_by_a_cold_shutdown_runs_again(on_django):
    worker = WorkerProcess("django://", "-P", "prefork", "-c", "1").start()
    try:
        result = sleep_late.delay(3)
        wait_until(lambda: result.state == TaskState.STARTED, timeout=15)
        worker.signal(signal.SIGTERM)
        worker.wait_for("warm shutdown", timeout=10)
        worker.signal(signal.SIGTERM)
        assert worker.process.wait(15) == 1
    finally:
        worker.kill()
    with WorkerProcess("django://", "-P", "solo"):
        assert result.get(timeout=30) == 3


def test_prefork_children_are_replaced_after_max_tasks(on_django):
    with WorkerProcess("django://", "-P", "prefork", "-c", "1", "--max-tasks-per-child", "2") as worker:
        pids = [hold_memory.delay(0).get(timeout=20) for _ in range(6)]
        assert "exited" not in worker.output()  # retiring children are not reported as lost
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5], pids
    assert len(set(pids)) == 3


def test_prefork_children_are_replaced_past_max_memory(on_django):
    # a Django child starts well under 300 MB of peak resident memory; a 400 MB task passes the limit
    with WorkerProcess("django://", "-P", "prefork", "-c", "1", "--max-memory-per-child", "300000") as worker:
        small = [hold_memory.delay(1).get(timeout=20) for _ in range(3)]
        assert len(set(small)) == 1, small  # under the limit: the same child
        big = hold_memory.delay(400).get(timeout=60)
        after = hold_memory.delay(1).get(timeout=20)
        out = worker.output()
    assert big == small[0], "the task that passed the limit finishes in its child"
    assert after != big, "...which is then replaced"
    assert f"child {big} passed --max-memory-per-child (300000 KB); replacing it" in out
    assert "exited" not in out


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_database_connections_killed_while_idle_do_not_fail_the_next_tasks(
        pg_database, redis_url, settings, transactional_db, pool):  # noqa: F811 (pg_database)
    """The server ends every connection of the worker (a restart, an idle timeout, a failover)."""
    import psycopg

    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": redis_url}
    # TRACK_STARTED off: the task's own query is the first use of its connection after the kill
    options = {"TESTPROJECT_DATABASE_URL": pg_database, "TASKS_Q_TRACK_STARTED": "false"}
    with WorkerProcess(redis_url, "-P", pool, "-c", "2", "-Q", f"pg-{pool}", env=options) as worker:
        def states(ids: list[str]) -> dict[str, str]:
            with psycopg.connect(pg_database) as conn:
                rows = conn.execute("SELECT task_id, state FROM django_tasks_q_taskresult WHERE task_id = ANY(%s)",
                                    [ids]).fetchall()
            return dict(rows)

        def run(tag: str) -> dict[str, str]:
            ids = [first_query.apply_async((f"{pool}-{tag}-{n}",), queue=f"pg-{pool}").id for n in range(6)]
            return wait_until(lambda: len(done := states(ids)) == 6 and
                              all(s in ("SUCCESS", "FAILURE") for s in done.values()) and done, timeout=30)

        assert set(run("before").values()) == {"SUCCESS"}
        time.sleep(0.5)  # idle
        with psycopg.connect(pg_database, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
        assert len(killed) >= 2, killed  # each child or thread kept its connection between tasks
        assert set(run("after").values()) == {"SUCCESS"}
        out = worker.output()
    for symptom in ("terminating connection", "server closed the connection", "connection is closed",
                    "could not record", "Traceback"):
        assert symptom not in out, out


def test_prefork_children_stop_when_their_parent_is_killed(on_django):
    """SIGKILL to the prefork parent: its children notice (each sibling holds the others' pipes open, so
    it is not an end of file they see) and stop, warm, instead of consuming for ever as orphans."""
    worker = WorkerProcess("django://", "-P", "prefork", "-c", "2", "-n", "orphans@%h").start()
    children: list[int] = []
    try:
        wait_until(lambda: len(_children(worker.process.pid)) == 2, timeout=15)
        children = _children(worker.process.pid)
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)
        wait_until(lambda: not any(_alive(pid) for pid in children), timeout=15)
        assert worker.output().count("lost its parent; stopping") == 2
    finally:
        worker.kill()
        for pid in children:  # a failed run must not leave them behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
