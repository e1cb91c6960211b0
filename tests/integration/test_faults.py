"""Faults the worker must survive without losing work: bounded prefetch,
a worker killed mid-task (acks_late), a broker that goes away and comes back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from django_tasks_q.core.states import TaskState
from testproject.videos.tasks import add, compress, sleep
from tests import servers
from tests.workers import WorkerProcess

from .broker_tools import queue_size
from .test_spine import wait_until

QUICK_REDELIVERY = '{"visibility_timeout": 1}'


@pytest.fixture(params=["django", "redis", "amqp"])
def broker(request, settings, transactional_db):
    url = "django://" if request.param == "django" else request.getfixturevalue(f"{request.param}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url,
                        "BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 1}}
    return url


def test_prefetch_is_bounded(broker):
    with WorkerProcess(broker, "-P", "solo", "-Q", "prefetch", "--prefetch-multiplier", "1"):
        first = sleep.apply_async((1.5,), queue="prefetch")
        rest = [add.apply_async((i, i), queue="prefetch") for i in range(9)]
        wait_until(lambda: first.state == TaskState.STARTED, timeout=15)
        time.sleep(0.3)
        # one running (acked at start) and at most one prefetched: 8 or more still on the broker
        assert queue_size(broker, "prefetch") >= 8
        assert [r.get(timeout=20) for r in rest] == [i * 2 for i in range(9)]


def test_acks_late_task_survives_its_worker_being_killed(broker):
    env = {"TASKS_Q_BROKER_TRANSPORT_OPTIONS": QUICK_REDELIVERY}
    first = WorkerProcess(broker, "-P", "solo", "-Q", "videos", "-n", "doomed@%h", env=env).start()
    try:
        result = compress.delay(5, steps=1, delay=4)  # acks_late=True
        wait_until(lambda: result.state == "PROGRESS", timeout=15)
    finally:
        first.kill()  # SIGKILL: no ack, no warm shutdown
    with WorkerProcess(broker, "-P", "solo", "-Q", "videos", "-n", "rescuer@%h", env=env) as rescuer:
        value = result.get(timeout=40)
        assert value == {"video_id": 5, "compressed": True, "worker": value["worker"]}
        assert value["worker"].startswith("rescuer@")
        assert f"[{result.id}] succeeded" in rescuer.output()


def _start_redis(binary: str, port: int, workdir: str) -> subprocess.Popen:
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    wait_until(lambda: servers.port_open(port), timeout=10)
    return process


def test_worker_reconnects_when_the_broker_comes_back(redis_url, settings, transactional_db, tmp_path):
    binary = servers.RedisServer()._find_binary()
    port = servers.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    redis = _start_redis(binary, port, str(tmp_path))
    try:
        with WorkerProcess(url, "-P", "solo") as worker:
            assert add.delay(1, 1).get(timeout=15) == 2
            redis.kill()
            redis.wait(10)
            worker.wait_for("broker connection lost", timeout=20)
            assert worker.process.poll() is None  # still running, backing off
            redis = _start_redis(binary, port, str(tmp_path))
            assert add.delay(2, 3).get(timeout=40) == 5  # the publisher reconnects by itself
            assert worker.output().count("ready: consuming") >= 2
    finally:
        if redis.poll() is None:
            os.killpg(redis.pid, signal.SIGKILL)
            redis.wait(10)


def test_rabbitmq_queues_are_durable_and_messages_persistent(amqp_url, settings, transactional_db):
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": amqp_url}
    add.apply_async((1, 2), queue="durability")
    with Connection(amqp_url) as conn:
        # the publish went out on another connection: wait for RabbitMQ to have queued it
        message = wait_until(lambda: conn.default_channel.basic_get("durability", no_ack=True), timeout=5)
        assert message is not None and message.properties["delivery_mode"] == 2  # persistent
        assert message.headers["task"] == "testproject.videos.tasks.add"
        with pytest.raises(PreconditionFailed, match="durable"):  # the queue exists as durable
            conn.channel().queue_declare("durability", durable=False)


# -- brokers that crash while work flows ----------------------------------------------------------

FAULTS_QUEUE = "faults"
#: unacked messages of a lost connection come back after 2 s (Redis, django://), not kombu's default hour
QUICK_RESTORE = {"TASKS_Q_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 2}'}


def publish_bound() -> float:
    """The longest ``delay()`` may take against a dead broker: every attempt's connect timeout, plus
    kombu's retry intervals (0, 0.2, 0.4 ... at most 1 s)."""
    from django_tasks_q.conf import settings

    return (settings.BROKER_PUBLISH_RETRIES + 1) * (settings.BROKER_CONNECTION_TIMEOUT + 1.0)


def assert_delay_fails_fast(masked: str, secret: str | None = None) -> float:
    from django_tasks_q.exceptions import BrokerUnavailable

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as excinfo:
        add.apply_async((1, 1), queue=FAULTS_QUEUE)
    elapsed = time.monotonic() - started
    assert elapsed < publish_bound(), f"delay() took {elapsed:.1f}s against a dead broker"
    assert masked in str(excinfo.value) and "testproject.videos.tasks.add" in str(excinfo.value)
    if secret:
        assert secret not in str(excinfo.value)
    return elapsed


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_broker_crash_while_work_flows_loses_no_task(kind, settings, transactional_db):
    """Kill the broker mid-flow: the worker logs it, backs off, reconnects, and every task sent runs."""
    from django_tasks_q.broker import connection
    from django_tasks_q.broker.connection import mask_url

    server = servers.RedisServer(appendonly=True) if kind == "redis" else servers.RabbitMQServer()
    with servers.serve(server) as url:
        # RabbitMQ holds a new message in memory for a while: only with publisher confirms has
        # delay() returned after it is on disk, and so safe from a crash (kill -9) of the node.
        options = {"confirm_publish": True} if kind == "amqp" else {}
        settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url, "BROKER_TRANSPORT_OPTIONS": options}
        connection.reset()
        with WorkerProcess(url, "-P", "threads", "-c", "2", "-Q", FAULTS_QUEUE, "-n", f"faults-{kind}@%h",
                           env=QUICK_RESTORE) as worker:
            flowing = [sleep.apply_async((0.05,), queue=FAULTS_QUEUE) for _ in range(40)]
            wait_until(lambda: sum(r.state == "SUCCESS" for r in flowing[:12]) >= 4, timeout=20)
            server.crash()
            assert flowing[-1].state != "SUCCESS"  # the crash came while work was flowing
            worker.wait_for("broker connection lost", timeout=20)
            assert_delay_fails_fast(mask_url(url), secret=":guest@" if kind == "amqp" else None)
            time.sleep(3.5)  # long enough to see the back-off grow: 1 s, then 2 s
            assert "reconnecting in 2s" in worker.output()
            assert worker.process.poll() is None
            server.start_again()
            wait_until(lambda: worker.output().count("ready: consuming") >= 2, timeout=60, interval=0.2)
            after = [add.apply_async((i, i), queue=FAULTS_QUEUE) for i in range(10)]
            assert [r.get(timeout=60) for r in after] == [i * 2 for i in range(10)]
            # every task sent before the crash ran too: from the durable queue, or given back unacked --
            # including one whose ack the dying server applied without answering (worker._start)
            try:
                assert [r.get(timeout=60) for r in flowing] == [0.05] * len(flowing)
            except Exception as exc:
                raise AssertionError(f"{exc}; the worker said:\n{worker.output()[-20000:]}") from exc
            assert "worker loop error" not in worker.output()
    connection.reset()


def _manage(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    from tests.workers import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


SEND = """
import json, sys, time
from django_tasks_q.exceptions import BrokerUnavailable
from testproject.videos.tasks import touch
out, first, count = {out!r}, {first}, {count}
started = time.monotonic()
try:
    if {bulk}:  # one bulk send: a backlog the worker cannot keep up with
        touch.apply_async_many([((f"{{out}}/{{i}}",), None) for i in range(first, first + count)], queue="faults")
    else:
        for i in range(first, first + count):
            touch.apply_async((f"{{out}}/{{i}}",), queue="faults")
    print(json.dumps({{"sent": count, "seconds": time.monotonic() - started}}))
except BrokerUnavailable as exc:
    print(json.dumps({{"error": str(exc), "seconds": time.monotonic() - started}}))
"""


def test_postgres_behind_django_broker_crashes_while_work_flows(tmp_path):
    """django:// on PostgreSQL: the database restarts mid-flow; every task sent runs, sends fail fast meanwhile."""
    import json

    server = servers.PostgresServer()
    with servers.serve(server) as pg_url:
        url = servers.create_database(pg_url, "tq_faults")
        env = {k: v for k, v in os.environ.items() if k not in ("TESTPROJECT_SQLITE", "TASKS_Q_BROKER_URL")}
        env.update({"TESTPROJECT_DATABASE_URL": url, "TASKS_Q_BROKER_URL": "django://", "PYTHONUNBUFFERED": "1"})
        _manage(env, "migrate", "--verbosity", "0")
        out = tmp_path / "done"
        out.mkdir()

        def send(first: int, count: int, bulk: bool = False) -> dict:
            code = SEND.format(out=str(out), first=first, count=count, bulk=bulk)
            return json.loads(_manage(env, "shell", "-c", code).stdout.strip().splitlines()[-1])

        worker_env = {**QUICK_RESTORE, "TESTPROJECT_DATABASE_URL": url}
        with WorkerProcess("django://", "-P", "threads", "-c", "2", "-Q", FAULTS_QUEUE, "-n", "faults-pg@%h",
                           env=worker_env) as worker:
            assert send(0, 2000, bulk=True)["sent"] == 2000  # sent one by one, the worker kept up with them
            wait_until(lambda: len(list(out.iterdir())) >= 10, timeout=30, interval=0.01)
            server.crash()
            assert len(list(out.iterdir())) < 2000  # the crash came while work was flowing
            down = send(5000, 1)
            assert "error" in down and "could not send task" in down["error"] and "django://" in down["error"], down
            assert down["seconds"] < publish_bound(), down
            wait_until(lambda: "broker connection lost" in worker.output() or "django:// database" in worker.output())
            time.sleep(2)
            assert worker.process.poll() is None
            server.start_again()
            assert send(2000, 20)["sent"] == 20
            wait_until(lambda: len(list(out.iterdir())) == 2020, timeout=90, interval=0.2)
            assert sorted(int(p.name) for p in out.iterdir()) == list(range(2020))
            assert worker.process.poll() is None
            output = worker.output()
            assert output.count("django:// database") < 20, "the outage flooded the log"
            assert "worker loop error" not in output
