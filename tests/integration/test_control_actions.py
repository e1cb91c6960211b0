"""``taskcontrol add_consumer / cancel_consumer / time_limit / pool_grow / pool_shrink`` against real workers.

Queues on each broker (the consume loop is per transport); pool resizing and
time limits once, on Redis, for the prefork and threads pools.
"""

from __future__ import annotations

import json
import re
import socket
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from kombu import Connection
from kombu import Queue as KombuQueue

from django_tasks_q.core.states import TaskState
from django_tasks_q.models import Worker as WorkerRow
from testproject.videos.tasks import add, naps, sleep
from tests.workers import WorkerProcess

from .broker_tools import purge, queue_size
from .test_spine import wait_until

HOST = socket.gethostname()
FAST = {"TASKS_Q_WORKER_HEARTBEAT": "0.3"}


def control(*args: str) -> str:
    out = StringIO()
    call_command("taskcontrol", *args, "-t", "5", stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(*args: str) -> str:
    """``taskcontrol`` that must exit 1 because the worker refused; what it printed."""
    out = StringIO()
    with pytest.raises(CommandError, match="not done by") as error:
        call_command("taskcontrol", *args, "-t", "5", stdout=out, stderr=StringIO())
    assert error.value.returncode == 1
    return out.getvalue()


def inspect(question: str, name: str) -> object:
    out = StringIO()
    call_command("taskinspect", question, "-d", name, "--json", "-t", "5", stdout=out, stderr=StringIO())
    return json.loads(out.getvalue())[name]


@pytest.fixture(scope="module")
def consumer_worker(broker_url, django_db_blocker):
    with WorkerProcess(broker_url, "-Q", "default", "-P", "threads", "-c", "2", "-n", "consumers@%h",
                       env=FAST) as worker:
        yield worker
        print(worker.output())  # shown when a test failed


def test_add_and_cancel_consumer_at_run_time(consumer_worker, use_broker):
    name, queue = f"consumers@{HOST}", f"extra-{use_broker.split(':')[0]}"
    purge(use_broker, queue)
    waiting = add.apply_async((1, 1), queue=queue)
    time.sleep(0.7)  # the worker does not consume the queue yet: the task stays there
    assert waiting.state == TaskState.PENDING and queue_size(use_broker, queue) == 1

    reply = json.loads(control("add_consumer", queue, "-d", "consumers@%h", "--json"))
    assert reply == {name: {"ok": f"add consumer {queue}"}}
    assert waiting.get(timeout=15) == 2
    assert [q["name"] for q in inspect("active_queues", name)] == ["default", queue]
    wait_until(lambda: WorkerRow.objects.get(hostname=name).queues == ["default", queue], timeout=10)
    again = refused("add_consumer", queue, "-d", "consumers@%h")
    assert f"-> {name}: ERROR" in again and f"already consuming from {queue}" in again

    assert f'"ok": "no longer consuming from {queue}"' in control("cancel_consumer", queue, "-d", "consumers@%h")
    assert [q["name"] for q in inspect("active_queues", name)] == ["default"]
    left = add.apply_async((2, 2), queue=queue)
    assert add.delay(3, 3).get(timeout=15) == 6  # still serving its own queue
    time.sleep(0.7)
    assert left.state == TaskState.PENDING and queue_size(use_broker, queue) == 1  # no longer consumed
    assert f"not consuming from {queue}" in refused("cancel_consumer", queue, "-d", "consumers@%h")
    assert "the only queue" in refused("cancel_consumer", "default", "-d", "consumers@%h")
    wait_until(lambda: WorkerRow.objects.get(hostname=name).queues == ["default"], timeout=10)
    purge(use_broker, queue)

    if use_broker.startswith("amqp"):  # RabbitMQ refuses a queue declared otherwise before: an error reply,
        with Connection(use_broker) as conn:  # and the worker's serving channel survives the refusal
            KombuQueue("conflicting", queue_arguments={"x-max-priority": 3})(conn.default_channel).declare()
        assert "the broker refused queue 'conflicting'" in refused("add_consumer", "conflicting", "-d", "consumers@%h")
        assert add.delay(4, 4).get(timeout=15) == 8
        with Connection(use_broker) as conn:
            KombuQueue("conflicting")(conn.default_channel).delete()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_pool_grow_shrink_and_time_limit(pool, redis_url, broker, transactional_db):
    broker(redis_url)
    name, queue = f"resize-{pool}@{HOST}", f"resize-{pool}"  # a queue of its own: other workers may be alive
    purge(redis_url, queue)
    with WorkerProcess(redis_url, "-Q", queue, "-P", pool, "-c", "1", "-n", name, env=FAST) as worker:
        assert inspect("stats", name)["pool"]["max-concurrency"] == 1
        # done at once, or (prefork: the first children after start come from the fork server, which
        # starts now) "pending" until the main loop has made them
        assert re.search(r'"ok": "pool will grow( to concurrency 3|.*pending)', control("pool_grow", "2", "-d", name))
        wait_until(lambda: inspect("stats", name)["pool"]["max-concurrency"] == 3, timeout=10)
        stats = inspect("stats", name)
        # the prefetch window follows: four per slot on threads, one per prefork child
        assert stats["pool"]["max-concurrency"] == 3 and stats["prefetch_count"] == (3 if pool == "prefork" else 12)
        if pool == "prefork":
            assert len(stats["pool"]["processes"]) == 3
        wait_until(lambda: WorkerRow.objects.get(hostname=name).concurrency == 3, timeout=10)
        sleeping = [sleep.apply_async((1.5,), queue=queue) for _ in range(3)]
        wait_until(lambda: len(inspect("active", name)) == 3, timeout=10)  # three slots run at once
        assert [r.get(timeout=15) for r in sleeping] == [1.5] * 3

        assert '"ok": "pool will shrink to concurrency 1"' in control("pool_shrink", "2", "-d", name)
        assert inspect("stats", name)["pool"]["max-concurrency"] == 1
        if pool == "prefork":
            wait_until(lambda: len(inspect("stats", name)["pool"]["processes"]) == 1, timeout=10)
        assert add.apply_async((2, 2), queue=queue).get(timeout=15) == 4
        assert "keeps at least one" in refused("pool_shrink", "-d", name)

        # time_limit: the new soft limit replaces naps' declared 0.5 s for tasks started from now on
        assert '"ok": "time limits set successfully"' in control("time_limit", naps.name, "1.2", "30", "-d", name)
        napping = naps.apply_async((10,), {"chunk": 0.05}, queue=queue).get(timeout=15)
        assert napping["soft_limit"] == "soft time limit (1.2s) exceeded" and 1.1 <= napping["after"] < 5
        assert '"error": "unknown task"' in refused("time_limit", "no.such.task", "1", "-d", name)
        if pool == "prefork":  # the prefork parent enforces a new hard limit too
            control("time_limit", sleep.name, "5", "0.5", "-d", name)
            killed = sleep.apply_async((3,), queue=queue)
            wait_until(lambda: killed.state == TaskState.FAILURE, timeout=15)
            assert "hard time limit (0.5s)" in str(killed.result)
            assert add.apply_async((1, 2), queue=queue).get(timeout=15) == 3  # a new child took over
        assert "pool grown by 2 to concurrency 3" in worker.output()


def test_prefork_children_reserve_what_the_command_line_asks(redis_url, broker, transactional_db):
    """``--prefetch-multiplier 3``: each child takes up to three messages at once (the default is one), and
    ``inspect reserved`` asks the child for the two it holds while it runs the first."""
    broker(redis_url)
    name, queue = f"window@{HOST}", "window"
    purge(redis_url, queue)
    sleeping = [sleep.apply_async((1.0,), queue=queue) for _ in range(3)]  # queued before the worker starts
    with WorkerProcess(redis_url, "-Q", queue, "-P", "prefork", "-c", "1", "-n", name, "--prefetch-multiplier", "3",
                       env=FAST) as worker:
        assert "prefetch 3)" in worker.output()
        wait_until(lambda: len(inspect("active", name)) == 1, timeout=10)
        held = inspect("reserved", name)
        assert len(held) == 2 and {task["id"] for task in held} < {r.id for r in sleeping}
        assert [r.get(timeout=15) for r in sleeping] == [1.0] * 3
