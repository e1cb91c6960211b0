"""Heartbeats, the watchdog and ``manage.py taskhealth``, with real workers.

The stalls are real, not simulated:

* a consumer whose connection goes silent: the worker talks to RabbitMQ
  through a relay that, when frozen, keeps its open connections up but
  passes no more bytes -- what a NAT or firewall that dropped the flow does;
  new connections still get through, as they would after such a drop;
* a main loop blocked on the database: the test holds an ACCESS EXCLUSIVE
  lock on the result table of a PostgreSQL database, and the worker's
  periodic result cleanup waits on it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from django_tasks_q.broker.connection import new_connection
from django_tasks_q.broker.queues import get_queue
from django_tasks_q.core.states import TaskState
from django_tasks_q.models import Worker as WorkerRow
from django_tasks_q.worker.monitor import LoopStats, Monitor, queue_depth
from testproject.videos.tasks import add, fail, sleep
from tests import servers
from tests.workers import ROOT, WorkerProcess, worker_env

from .test_spine import wait_until

FAST = {"TASKS_Q_WORKER_HEARTBEAT": "0.3", "TASKS_Q_WORKER_STUCK_AFTER": "2"}
HOST = socket.gethostname()


def taskhealth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "taskhealth", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def row(name: str) -> WorkerRow | None:
    return WorkerRow.objects.filter(hostname=name).first()


@pytest.fixture
def on_django(settings, transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "django://"}
    # a worker of another module writes its last row as it stops, which can be after that module's flush
    WorkerRow.objects.all().delete()
    return "django://"


# -- heartbeats and taskhealth ------------------------------------------------

def test_heartbeat_row_counters_and_taskhealth_through_a_workers_life(on_django):
    env = worker_env("django://")
    worker = WorkerProcess("django://", "-P", "threads", "-c", "2", "-n", "health@%h", env=FAST).start()
    try:
        name = f"health@{HOST}"
        assert add.delay(1, 2).get(timeout=20) == 3
        with pytest.raises(ValueError):
            fail.delay("boom").get(timeout=20)
        beat = wait_until(lambda: (r := row(name)) and r.processed == 2 and r.failed == 1 and r, timeout=10)
        assert beat.pid == worker.process.pid and beat.pool == "threads" and beat.concurrency == 2
        assert beat.queues == ["default"] and beat.broker == "django://" and beat.heartbeat_interval == 0.3
        assert beat.is_online() and beat.problem == "" and beat.stopped_at is None and beat.started_at
        assert beat.last_progress_at is not None and len(beat.load) == 3
        first = beat.last_heartbeat
        wait_until(lambda: row(name).last_heartbeat > first, timeout=5)  # it keeps beating

        ok = taskhealth(env=env)  # default: every worker named ...@<this host>
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"{name}: ok (pid {worker.process.pid}" in ok.stdout and "2 processed, 1 failed" in ok.stdout
        assert taskhealth("-n", "health@%h", env=env).returncode == 0
        unknown = taskhealth("-n", "health@%h", "-n", "nosuch@%h", env=env)
        assert unknown.returncode == 1 and f"nosuch@{HOST}: unknown" in unknown.stdout

        assert worker.stop() == 0
        stopped = row(name)
        assert stopped.stopped_at is not None and not stopped.is_online() and stopped.active == 0
        gone = taskhealth(env=env)
        assert gone.returncode == 1 and f"{name}: stopped cleanly at" in gone.stdout
    finally:
        worker.kill()


def test_a_killed_worker_is_reported_offline(on_django):
    env = worker_env("django://")
    with WorkerProcess("django://", "-P", "solo", "-n", "doomed@%h", env=FAST) as worker:
        wait_until(lambda: row(f"doomed@{HOST}"), timeout=10)
        worker.kill()  # SIGKILL: no clean stop, no stopped_at
        time.sleep(1.0)
        bad = taskhealth("--max-age", "0.5", env=env)
    assert bad.returncode == 1 and f"doomed@{HOST}: offline since" in bad.stdout
    assert row(f"doomed@{HOST}").stopped_at is None
    refused = taskhealth("--max-age", "-1", env=env)
    assert refused.returncode == 1 and "--max-age must be a positive number" in refused.stderr


def test_without_heartbeat_there_is_no_row_and_taskhealth_says_so(on_django):
    env = worker_env("django://")
    with WorkerProcess("django://", "-P", "solo", "--without-heartbeat", env=FAST):
        assert add.delay(2, 2).get(timeout=20) == 4
        time.sleep(0.6)
        assert not WorkerRow.objects.exists()
        none = taskhealth(env=env)
    assert none.returncode == 1 and f"no worker on this host ({HOST})" in none.stdout


def test_a_solo_task_longer_than_stuck_after_is_not_a_stall(on_django):
    """The solo pool runs tasks in the main loop's thread: a busy loop is not a stuck one."""
    with WorkerProcess("django://", "-P", "solo", "-n", "busy@%h", env=FAST) as worker:
        result = sleep.delay(3.0)
        wait_until(lambda: result.state == TaskState.STARTED, timeout=15)
        seen = []
        while result.state != TaskState.SUCCESS:  # 3s > WORKER_STUCK_AFTER (2s), heartbeats every 0.3s
            seen.append(row(f"busy@{HOST}").problem)
            time.sleep(0.1)
        assert len(seen) > 10 and set(seen) == {""}
        assert "is stuck" not in worker.output()


# -- the watchdog: a consumer whose connection went silent (RabbitMQ) --------------

class FreezingRelay:
    """A TCP relay to ``target``; ``freeze()`` stops every open connection passing bytes.

    Frozen connections stay open (nothing is sent or closed on the client's
    behalf) and what arrives is dropped, as a firewall that lost the flow
    drops it. A client closing its end still closes the other end, so the
    broker then gives back what it had pushed into the frozen connection.
    New connections are relayed normally.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen: list[threading.Event] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            frozen = threading.Event()
            self.frozen.append(frozen)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, frozen), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, frozen: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if not frozen.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def freeze(self) -> int:
        for event in self.frozen:
            event.set()
        return len(self.frozen)

    def close(self) -> None:
        self.listener.close()


def test_a_silent_consumer_is_found_reported_and_reconnected(amqp_url, settings, transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": amqp_url}  # the test publishes directly
    host, port = amqp_url.split("@", 1)[1].split("/", 1)[0].split(":")
    relay = FreezingRelay((host, int(port)))
    relayed = amqp_url.replace(f"{host}:{port}", f"127.0.0.1:{relay.port}")
    name = f"silent@{HOST}"
    worker = WorkerProcess(relayed, "-P", "solo", "-Q", "default", "--prefetch-multiplier", "1",
                           "-n", "silent@%h", env=FAST).start()
    try:
        assert add.delay(1, 1).get(timeout=20) == 2
        assert relay.freeze() >= 1
        results = [add.delay(n, n) for n in range(4)]  # one is pushed into the frozen connection
        problem = wait_until(lambda: (r := row(name)) and r.problem, timeout=20, interval=0.01)
        assert problem.startswith("queues hold ") and "nothing was received" in problem
        assert [r.get(timeout=30) for r in results] == [0, 2, 4, 6]  # after the reconnect, all of them
        wait_until(lambda: row(name).problem == "", timeout=10)
        out = worker.output()
        assert f"worker {name} is stuck: queues hold" in out and "ERROR" in out.split("is stuck")[0].splitlines()[-1]
        assert "ConsumerStalled" in out and f"worker {name} recovered (was: queues hold" in out
        # the count reaches the row with the next heartbeat: a task's result is stored before it is counted
        wait_until(lambda: row(name).processed == 5, timeout=5)
    finally:
        worker.kill()
        relay.close()


# -- the watchdog: a main loop blocked on the database (PostgreSQL) -----------------

@pytest.fixture(scope="module")
def pg_database(postgres_url):
    """A fresh, migrated PostgreSQL database for worker subprocesses: its URL."""
    url = servers.create_database(postgres_url, f"tq_health_{uuid.uuid4().hex[:12]}")
    env = {k: v for k, v in os.environ.items() if k != "TESTPROJECT_SQLITE"}
    env["TESTPROJECT_DATABASE_URL"] = url
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return url


def test_a_main_loop_blocked_on_a_database_lock_is_reported_until_it_moves(pg_database, redis_url):
    import psycopg

    env = {**worker_env(redis_url), "TESTPROJECT_DATABASE_URL": pg_database}
    options = {**FAST, "TESTPROJECT_DATABASE_URL": pg_database, "TASKS_Q_RESULT_EXPIRES": "2"}  # cleanup each 1s
    with WorkerProcess(redis_url, "-P", "threads", "-c", "1", "-n", "locked@%h", env=options) as worker:
        name = f"locked@{HOST}"
        assert taskhealth("-n", "locked@%h", env=env).returncode == 0
        with psycopg.connect(pg_database) as lock:  # a transaction: the lock lasts until rollback
            lock.execute("LOCK TABLE django_tasks_q_taskresult IN ACCESS EXCLUSIVE MODE")
            stuck = wait_until(lambda: (p := taskhealth("-n", "locked@%h", env=env)).returncode == 1 and p,
                               timeout=20, interval=0.2)
            assert f"{name}: stuck: the main loop has not iterated for" in stuck.stdout
            lock.rollback()
        wait_until(lambda: taskhealth("-n", "locked@%h", env=env).returncode == 0, timeout=20, interval=0.2)
        out = worker.output()
        assert f"worker {name} is stuck: the main loop has not iterated" in out
        assert f"worker {name} recovered" in out


# -- the watchdog's decisions and the depth probe, against real brokers ---------------

@pytest.mark.parametrize("kind", ["django", "redis", "amqp"])
def test_queue_depth_counts_ready_messages_on_every_broker(kind, request, settings, transactional_db):
    url = "django://" if kind == "django" else request.getfixturevalue(f"{kind}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    queue = get_queue(f"depth-{uuid.uuid4().hex[:8]}")
    with new_connection(url) as connection:
        channel = connection.channel()
        bound = queue(channel)
        bound.declare()
        assert queue_depth(channel, queue) == 0  # an empty redis queue has no key: still 0, not an error
        producer = connection.Producer(channel)
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=queue.routing_key)
        wait_until(lambda: queue_depth(channel, queue) == 3, timeout=5)
        held = bound.get(no_ack=False)  # taken, not acked: no longer ready
        assert held is not None and queue_depth(channel, queue) == 2
        held.ack()
        bound.purge()
        bound.delete()


class Clockwork:
    """A ``Worker`` as the monitor sees it, over a real broker queue, with a clock the test moves."""

    def __init__(self, queue_name: str, free: int = 1, running: int = 0):
        self.hostname = "fake@test"
        self.queue_names = [queue_name]
        self.stopping = False
        self.ready: list = []
        self.rate_limits: list = []
        self.stats = LoopStats()
        self.pool = SimpleNamespace(free_slots=lambda: free, in_flight=lambda: running, inline_task=None,
                                    inline_ended_at=0.0)


def test_watchdog_decisions_against_a_real_queue(redis_url, settings, db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": redis_url}
    queue = get_queue(f"watched-{uuid.uuid4().hex[:8]}")
    worker = Clockwork(queue.name)
    stats = worker.stats
    monitor = Monitor(worker, interval=1.0, stuck_after=10.0)
    t0 = stats.received_at

    def look(at: float) -> str:  # the main loop iterates; what does the watchdog say at ``at``?
        stats.loop_at = at
        return monitor.diagnose(at)

    assert look(t0 + 5) == ""  # silent, but not for long
    assert look(t0 + 20) == ""  # silent for long, but the queue is empty
    with new_connection(redis_url) as connection:
        queue(connection.channel()).declare()
        connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=queue.routing_key)
        assert look(t0 + 30) == ""  # first look at a full queue: a delivery may be on its way
        assert not stats.reconnect_requested
        found = look(t0 + 33)  # still full, still nothing received: stuck
        assert found.startswith("queues hold 1 message(s) but nothing was received for 33s"), found
        assert stats.reconnect_requested
        stats.reconnect_requested = False
        monitor.problem = found
        assert look(t0 + 34) == found  # measured a second ago: the finding stands
        again = look(t0 + 37)  # measured again: still stuck, but one reconnect per WORKER_STUCK_AFTER
        assert again.startswith("queues hold 1 message(s) but nothing was received for 37s")
        assert not stats.reconnect_requested
        stats.received()  # a message arrived
        stats.received_at = t0 + 38
        assert look(t0 + 39) == ""
        monitor.problem = ""
        stats.loop_at = t0 + 40
        assert monitor.diagnose(t0 + 51).startswith("the main loop has not iterated for 11s")
        worker.pool.inline_task = "some-task-id"  # ... but it runs a task inline (solo): fine
        assert monitor.diagnose(t0 + 51) == ""
        worker.pool.inline_task = None
        worker.stopping = True  # a warm shutdown waits on tasks: not a stall
        assert monitor.diagnose(t0 + 60) == ""
        worker.stopping = False
        worker.rate_limits = ["held job"]  # jobs held for a rate limit fill the prefetch window
        assert look(t0 + 100) == ""
        worker.rate_limits = []
        worker.pool.free_slots = lambda: 0  # every slot busy: silence is expected
        assert look(t0 + 120) == ""
        stats.connection_failed(ConnectionRefusedError("refused"))
        stats.broker_error_since = t0 + 200
        assert look(t0 + 211).startswith("no broker connection for 11s (ConnectionRefusedError: refused)")
        stats.tick()
        assert stats.broker_error == "" and stats.broker_error_since is None
        connection.channel().queue_purge(queue.name)
