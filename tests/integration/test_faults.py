"""Faults the worker must survive without losing work: bounded prefetch,
a worker killed mid-task (acks_late), a broker that goes away and comes back."""

from __future__ import annotations

import os
import signal
import subprocess
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
        message = conn.default_channel.basic_get("durability", no_ack=True)
        assert message is not None and message.properties["delivery_mode"] == 2  # persistent
        assert message.headers["task"] == "testproject.videos.tasks.add"
        with pytest.raises(PreconditionFailed, match="durable"):  # the queue exists as durable
            conn.channel().queue_declare("durability", durable=False)
