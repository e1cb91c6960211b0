"""Our worker's events, read by Celery's own event receiver and by a real Flower.

One ``manage.py taskworker -E`` per broker (Redis, RabbitMQ) with a one-second
heartbeat. Celery's ``app.events.Receiver`` listens from before the worker
starts, so it sees ``worker-online`` too. Flower (the real package, on
loopback) lists workers through remote-control broadcasts and tasks through
events, so it shows both halves working together.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery

from django_tasks_q.core.states import TaskState
from testproject.videos.tasks import add, fail, flaky
from tests.integration.test_spine import wait_until
from tests.workers import WorkerProcess

from .processes import CeleryProcess

pytestmark = pytest.mark.django_db(transaction=True)
NAME = "events@tests"


class Collector:
    """Celery's event receiver in a thread, keeping every event it gets."""

    def __init__(self, broker_url: str):
        self.app = Celery("event-reader", broker=broker_url, set_as_current=False)
        self.events: list[dict] = []
        self.receiver = None
        self._consuming = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            self.receiver.on_consume_ready = lambda *args, **kwargs: self._consuming.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> "Collector":
        self._thread.start()
        assert self._consuming.wait(10), "the event receiver did not start consuming"
        return self

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self._thread.join(10)
        self.app.close()

    def of(self, type: str, **match: object) -> list[dict]:
        return [e for e in list(self.events)
                if e["type"] == type and all(e.get(k) == v for k, v in match.items())]


@pytest.fixture(scope="module")
def collector(interop_broker):
    reader = Collector(interop_broker).start()
    yield reader
    reader.stop()


@pytest.fixture(scope="module")
def worker(interop_broker, collector):
    process = WorkerProcess(interop_broker, "-P", "prefork", "-c", "2", "-n", NAME, "-E",
                            env={"TASKS_Q_WORKER_HEARTBEAT": "1"})
    with process:
        yield process
        print(process.output())  # shown when a test failed


@pytest.fixture
def ours(worker, interop_broker, broker):
    broker(interop_broker)
    return worker


def test_celery_receiver_sees_task_and_worker_events(ours, collector):
    ok, bad, retried = add.delay(2, 3), fail.delay("nope"), flaky.delay(2)
    assert ok.get(timeout=20) == 5 and retried.get(timeout=20) == 1
    wait_until(lambda: bad.state == TaskState.FAILURE, timeout=20)
    wait_until(lambda: collector.of("task-failed", uuid=bad.id) and collector.of("task-succeeded", uuid=retried.id),
               timeout=10)
    wait_until(lambda: len(collector.of("worker-heartbeat", hostname=NAME)) >= 2, timeout=10)

    online = collector.of("worker-online", hostname=NAME)[0]
    assert online["sw_ident"] == "django-tasks-q" and online["sw_ver"] and online["sw_sys"]
    assert online["freq"] == 1.0 and online["pid"] == ours.process.pid
    beat = collector.of("worker-heartbeat", hostname=NAME)[-1]
    assert beat["processed"] >= 3 and beat["active"] >= 0 and isinstance(beat["loadavg"], list)
    assert {"timestamp", "utcoffset", "clock", "pid", "sw_ident"} <= set(beat)

    received = collector.of("task-received", uuid=ok.id)[0]
    assert received["name"] == add.name and received["args"] == "(2, 3)" and received["kwargs"] == "{}"
    assert received["retries"] == 0 and received["root_id"] == ok.id and received["eta"] is None
    assert received["hostname"] == NAME
    assert collector.of("task-started", uuid=ok.id)
    succeeded = collector.of("task-succeeded", uuid=ok.id)[0]
    assert succeeded["result"] == "5" and 0 <= succeeded["runtime"] < 10
    failed = collector.of("task-failed", uuid=bad.id)[0]
    assert "nope" in failed["exception"] and "ValueError" in failed["traceback"]
    again = collector.of("task-retried", uuid=retried.id)[0]
    assert again["exception"] and "Traceback" in again["traceback"]

    # one Lamport clock for the parent and both children: every event of our worker has a value of its own,
    # and ordered by it (as a monitor orders them) a task's events come in the order they were made
    ours_events = [e for e in collector.events if e.get("hostname") == NAME]
    clocks = [e["clock"] for e in ours_events]
    assert len(set(clocks)) == len(clocks)
    order = [e["type"] for e in sorted(ours_events, key=lambda e: e["clock"]) if e.get("uuid") == ok.id]
    assert order == ["task-received", "task-started", "task-succeeded"]
    online_clock = online["clock"]
    assert all(e["clock"] > online_clock for e in ours_events if e.get("uuid"))  # one sequence, not one per child


def test_revoked_and_offline_events_reach_a_celery_receiver(ours, collector, interop_broker):
    expired = add.apply_async((1, 1), expires=datetime.now(timezone.utc) - timedelta(seconds=5))
    revoked = add.apply_async((2, 2), countdown=3)  # held by the worker until its eta...
    revoked.revoke()  # ...which is longer than a revoke takes to reach it: dropped when due
    wait_until(lambda: collector.of("task-revoked", uuid=expired.id) and collector.of("task-revoked", uuid=revoked.id),
               timeout=20)
    assert collector.of("task-revoked", uuid=expired.id)[0]["expired"] is True
    dropped = collector.of("task-revoked", uuid=revoked.id)[0]
    assert dropped["expired"] is False and dropped["terminated"] is False and dropped["hostname"] == NAME
    assert not collector.of("task-started", uuid=expired.id) and not collector.of("task-started", uuid=revoked.id)

    # a second, short-lived worker: online when it starts, offline when it is stopped (warm shutdown)
    brief = "brief@tests"
    with WorkerProcess(interop_broker, "-P", "solo", "-n", brief, "-E", "-Q", "brief"):
        wait_until(lambda: collector.of("worker-online", hostname=brief), timeout=10)
        assert not collector.of("worker-offline", hostname=brief)
    offline = wait_until(lambda: collector.of("worker-offline", hostname=brief), timeout=10)[0]
    assert offline["sw_ident"] == "django-tasks-q" and offline["clock"] > collector.of(
        "worker-online", hostname=brief)[0]["clock"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def test_flower_lists_our_worker_and_its_tasks(ours, interop_broker):
    port = _free_port()
    flower = CeleryProcess(interop_broker, "flower", "--address=127.0.0.1", f"--port={port}",
                           env={"FLOWER_UNAUTHENTICATED_API": "true"})
    flower.ready_text = "Visit me at"
    with flower:
        # the event stream is live once Flower has heard our heartbeats
        wait_until(lambda: _get(port, "/api/workers?status=1").get(NAME), timeout=20)
        ok, bad = add.delay(20, 22), fail.delay("flower")
        assert ok.get(timeout=20) == 42
        wait_until(lambda: bad.state == TaskState.FAILURE, timeout=20)

        def seen() -> dict:
            tasks = _get(port, "/api/tasks")
            return tasks if {ok.id, bad.id} <= set(tasks) and tasks[bad.id]["state"] == "FAILURE" else {}

        tasks = wait_until(seen, timeout=15)
        assert tasks[ok.id]["state"] == "SUCCESS" and tasks[ok.id]["name"] == add.name
        assert tasks[ok.id]["worker"] == NAME and tasks[ok.id]["result"] == "42"
        assert tasks[bad.id]["worker"] == NAME and "flower" in tasks[bad.id]["exception"]

        def listed() -> dict:  # Flower inspects asynchronously: ask until every answer is in
            info = _get(port, "/api/workers?refresh=1").get(NAME) or {}
            return info if {"stats", "registered", "active_queues", "conf"} <= set(info) else {}

        try:
            info = wait_until(listed, timeout=15)
        except AssertionError:
            raise AssertionError(f"Flower did not list {NAME}:\n{flower.output()}") from None
        assert info["stats"]["pid"] == ours.process.pid and info["stats"]["pool"]["max-concurrency"] == 2
        assert add.name in info["registered"]
        assert [q["name"] for q in info["active_queues"]] == ["default"]
        assert info["conf"]["worker_send_task_events"] is True
