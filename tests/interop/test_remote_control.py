"""Celery's remote control against our worker: ``celery inspect`` / ``celery control`` and ``app.control``.

One ``manage.py taskworker`` per broker (Redis, RabbitMQ) answers the real
``celery -A tests.interop.celery_app inspect ... --json`` commands; the
tests read the JSON replies and check them against what the worker is
doing. The last test shuts the worker down through ``control shutdown``.
A last test runs the same mailbox on ``django://`` with kombu's client.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery

from django_tasks_q.core.states import TaskState
from testproject.videos.tasks import add, sleep_late
from tests.integration.test_spine import wait_until
from tests.workers import WorkerProcess

from .processes import run_celery

pytestmark = pytest.mark.django_db(transaction=True)
NAME = "rc@tests"


@pytest.fixture(scope="module")
def worker(interop_broker):
    # two children: one runs a long task while the other holds an eta task and runs the rest; each
    # reserves one message at a time (no --prefetch-multiplier given)
    # a visibility timeout of a second: the message of the task terminated below comes back at once on Redis
    quick = {"TASKS_Q_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 1, "unacked_restore_throttle": 1}'}
    process = WorkerProcess(interop_broker, "-P", "prefork", "-c", "2", "-n", NAME, "-Q", "default", env=quick)
    with process:
        yield process
        print(process.output())  # shown when a test failed


@pytest.fixture
def ours(worker, interop_broker, broker):
    broker(interop_broker)  # this test process sends our tasks to the same broker
    return worker


@pytest.fixture
def app(interop_broker):
    celery = Celery("rc-client", broker=interop_broker, set_as_current=False)
    celery.conf.accept_content = ["json"]
    yield celery
    celery.close()


def celery_json(broker_url: str, *args: str) -> dict:
    """``celery <args> --json -d NAME``: the replies by node name (``inspect`` prints a dict, ``control`` a list)."""
    done = run_celery(broker_url, *args, "--json", "-d", NAME, "-t", "5")
    assert done.returncode == 0, f"celery {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith(("{", "["))]
    assert lines, f"no JSON in the output of celery {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    replies = json.loads(lines[-1])
    return replies if isinstance(replies, dict) else {k: v for reply in replies for k, v in reply.items()}


def test_ping_stats_registered_queues_and_conf(ours, interop_broker, app):
    assert add.delay(2, 3).get(timeout=20) == 5
    assert celery_json(interop_broker, "inspect", "ping") == {NAME: {"ok": "pong"}}

    stats = celery_json(interop_broker, "inspect", "stats")[NAME]
    assert stats["pid"] == ours.process.pid
    assert stats["total"][add.name] >= 1
    assert stats["pool"]["max-concurrency"] == 2 and len(stats["pool"]["processes"]) == 2
    assert ours.process.pid not in stats["pool"]["processes"]
    assert stats["prefetch_count"] == 2 and stats["uptime"] >= 0 and int(stats["clock"]) > 0
    assert stats["broker"]["port"] == int(interop_broker.rsplit(":", 1)[1].split("/")[0])
    assert "password" not in stats["broker"] and stats["rusage"]["maxrss"] > 0

    inspect = app.control.inspect(destination=[NAME], timeout=5)
    registered = inspect.registered()[NAME]
    assert add.name in registered and "testproject.videos.tasks.limited [rate_limit=5/s]" in registered
    queues = inspect.active_queues()[NAME]
    assert [q["name"] for q in queues] == ["default"] and queues[0]["exchange"]["name"] == "default"
    conf = inspect.conf()[NAME]
    assert conf["task_default_queue"] == "default" and conf["worker_concurrency"] == 2
    assert "guest:guest" not in json.dumps(conf)  # the RabbitMQ password is masked
    assert inspect.clock()[NAME]["clock"] > 0
    # a command we do not implement answers with an error, not silence
    assert "unknown command 'memsample'" in inspect.memsample()[NAME]["error"]


def test_active_reserved_scheduled_revoke_and_terminate(ours, interop_broker, app):
    # acks_late: a busy child then reserves nothing (an early ack would let RabbitMQ push it the next one)
    running = sleep_late.delay(30)
    wait_until(lambda: running.state == TaskState.STARTED, timeout=20)
    later = add.apply_async((2, 2), countdown=25)  # held by the idle child until due: scheduled
    inspect = app.control.inspect(destination=[NAME], timeout=5)
    wait_until(lambda: any(t["request"]["id"] == later.id for t in inspect.scheduled()[NAME]), timeout=10)
    assert add.delay(1, 1).get(timeout=10) == 2  # the child holding the eta task runs this one meanwhile

    active = celery_json(interop_broker, "inspect", "active")[NAME]
    assert [task["id"] for task in active] == [running.id]
    task = active[0]
    assert task["name"] == sleep_late.name and task["args"] is None and task["kwargs"] is None  # may hold secrets
    assert inspect.active(safe=False)[NAME][0]["args"] == [30]  # given when asked with Celery's safe=False
    assert task["hostname"] == NAME and task["acknowledged"] is False and task["time_start"] <= time.time()
    assert task["worker_pid"] in celery_json(interop_broker, "inspect", "stats")[NAME]["pool"]["processes"]
    assert task["delivery_info"]["routing_key"] == "default"
    assert inspect.active(safe=True)[NAME][0]["args"] == "(30,)"  # Flower asks for reprs

    assert inspect.reserved()[NAME] == []
    scheduled = celery_json(interop_broker, "inspect", "scheduled")[NAME]
    assert [entry["request"]["id"] for entry in scheduled] == [later.id]
    eta = datetime.fromisoformat(scheduled[0]["eta"])
    assert timedelta(seconds=10) < eta - datetime.now(timezone.utc) <= timedelta(seconds=25)

    # revoke: the same stored revoke as `taskcontrol revoke`, result REVOKED at once
    reply = celery_json(interop_broker, "control", "revoke", later.id)
    assert reply == {NAME: {"ok": f"tasks {later.id} flagged as revoked"}}
    assert later.state == TaskState.REVOKED
    wait_until(lambda: later.id in inspect.revoked()[NAME], timeout=10)

    # terminate: the running task stops now, REVOKED; its child is replaced and the worker goes on
    before = celery_json(interop_broker, "inspect", "stats")[NAME]["pool"]["processes"]
    reply = celery_json(interop_broker, "control", "terminate", "SIGKILL", running.id)
    assert reply == {NAME: {"ok": f"terminate: {running.id}"}}
    wait_until(lambda: running.state == TaskState.REVOKED, timeout=15)
    wait_until(lambda: celery_json(interop_broker, "inspect", "stats")[NAME]["pool"]["processes"] != before,
               timeout=15)
    assert [add.delay(i, 1).get(timeout=20) for i in range(3)] == [1, 2, 3]
    # its acks_late message, never acked, comes back from the broker: acked, not run again (found revoked,
    # or found ended)
    wait_until(lambda: any(running.id in line and ("dropped without running" in line or "not run again" in line)
                           for line in ours.output().splitlines()), timeout=15)
    assert running.state == TaskState.REVOKED
    wait_until(lambda: inspect.active()[NAME] == [] and inspect.reserved()[NAME] == [], timeout=10)


def test_rate_limit(ours, interop_broker, app):
    reply = celery_json(interop_broker, "control", "rate_limit", add.name, "2/s")
    assert reply == {NAME: {"ok": "new rate limit set successfully"}}
    started = time.monotonic()
    waiting = [add.delay(i, 0) for i in range(4)]
    # a job waiting for its slot is held by a child, and reported reserved (asked of the children)
    inspect = app.control.inspect(destination=[NAME], timeout=5)
    held: list[dict] = []
    wait_until(lambda: held.extend(inspect.reserved()[NAME]) or held, timeout=5)
    assert {task["id"] for task in held} <= {r.id for r in waiting}
    assert [r.get(timeout=20) for r in waiting] == [0, 1, 2, 3]
    assert time.monotonic() - started >= 1.4  # four starts 0.5 s apart
    control = app.control
    assert control.rate_limit(add.name, "0", destination=[NAME], reply=True, timeout=5) == [
        {NAME: {"ok": "rate limit disabled successfully"}}]
    assert control.rate_limit("no.such.task", "1/s", destination=[NAME], reply=True, timeout=5) == [
        {NAME: {"error": "unknown task"}}]
    bad = control.rate_limit(add.name, "fast", destination=[NAME], reply=True, timeout=5)[0][NAME]
    assert bad["error"].startswith("Invalid rate limit string")


def test_shutdown_is_a_warm_shutdown(ours, interop_broker):
    assert celery_json(interop_broker, "control", "shutdown") == {NAME: {"ok": "shutting down"}}
    assert ours.process.wait(20) == 0
    assert "warm shutdown by remote control" in ours.output()


def test_remote_control_on_the_django_broker(broker, transactional_db):
    """The same mailbox on ``django://``: fanout by binding rows; the worker's queue is gone after it stops."""
    from django_tasks_q.broker.connection import new_connection
    from django_tasks_q.models import BrokerBinding
    from django_tasks_q.worker.remote_control import mailbox

    broker("django://")
    name = "rc-django@tests"
    with WorkerProcess("django://", "-P", "threads", "-c", "1", "-n", name) as worker:
        assert add.delay(1, 2).get(timeout=20) == 3
        with new_connection("django://") as connection:
            box = mailbox()(connection)
            assert box._broadcast("ping", reply=True, timeout=10, destination=[name]) == [{name: {"ok": "pong"}}]
            stats = box._broadcast("stats", reply=True, timeout=10, destination=[name])[0][name]
            assert stats["pid"] == worker.process.pid and stats["total"][add.name] == 1
            box._broadcast("shutdown", reply=True, timeout=10, destination=[name])
        assert worker.process.wait(20) == 0
    assert not BrokerBinding.objects.filter(queue=f"{name}.celery.pidbox").exists()
