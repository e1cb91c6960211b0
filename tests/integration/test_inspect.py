"""``taskinspect`` and ``taskstatus`` against a real worker on each broker."""

from __future__ import annotations

import json
import socket
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from django_tasks_q.core.states import TaskState
from testproject.videos.tasks import add, sleep
from tests.workers import WorkerProcess

from .test_spine import wait_until

NAME = f"inspected@{socket.gethostname()}"


@pytest.fixture(scope="module")
def inspected(broker_url, django_db_blocker):
    with WorkerProcess(broker_url, "-Q", "default", "-P", "threads", "-c", "2", "-n", "inspected@%h") as worker:
        yield worker


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def inspect(question: str, *more: str) -> dict:
    return json.loads(run("taskinspect", question, "-d", "inspected@%h", "--json", "-t", "3", *more))[NAME]


def test_inspect_and_status_answer_from_the_running_worker_and_name_the_silent(inspected, use_broker):
    status = run("taskstatus", "-t", "2")
    assert f"{NAME}: OK" in status and "online." in status

    assert inspect("ping") == {"ok": "pong"}
    assert add.name in inspect("registered")
    assert "default" in [queue["name"] for queue in inspect("active_queues")]
    assert inspect("stats")["pid"] == inspected.process.pid

    running = sleep.delay(3)
    later = add.apply_async((1, 1), countdown=20)
    wait_until(lambda: running.state == TaskState.STARTED, timeout=15)
    assert running.id in [task["id"] for task in inspect("active")]
    wait_until(lambda: later.id in [entry["request"]["id"] for entry in inspect("scheduled")], timeout=10)

    human = run("taskinspect", "ping", "-d", "inspected@%h", "-t", "3")
    assert f"-> {NAME}: OK" in human and '"ok": "pong"' in human
    later.revoke()

    # (one test: on django:// the flush after a test also removes the worker's mailbox binding)
    with pytest.raises(CommandError, match="did not reply: nosuch@") as error:
        run("taskinspect", "ping", "-d", "inspected@%h,nosuch@%h", "-t", "1.5")
    assert error.value.returncode == 1
    with pytest.raises(CommandError, match="--timeout must be a positive"):
        run("taskinspect", "ping", "-t", "0")

    # taskcontrol's broadcasts: a rate limit (refused for an unknown task), then a warm shutdown
    limited = run("taskcontrol", "rate_limit", add.name, "2/s", "-d", "inspected@%h", "-t", "3")
    assert f"-> {NAME}: OK" in limited and "new rate limit set" in limited
    with pytest.raises(CommandError, match=f"not done by: {NAME}"):
        run("taskcontrol", "rate_limit", "no.such.task", "2/s", "-d", "inspected@%h", "-t", "3")
    assert "shutting down" in run("taskcontrol", "shutdown", "-d", "inspected@%h", "-t", "3")
    inspected.process.wait(20)
    assert inspected.process.returncode == 0 and "warm shutdown by remote control" in inspected.output()
