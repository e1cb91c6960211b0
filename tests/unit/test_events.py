"""The event dispatcher: Celery's field layout and routing keys, on kombu's in-process broker."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from kombu import Connection, Queue

from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.worker import events
from django_tasks_q.worker.executor import Outcome

URL = "memory://"


@pytest.fixture
def captured():
    """Every event published to ``celeryev`` on ``memory://``, as (routing key, headers, body)."""
    connection = Connection(URL)
    queue = Queue(f"events-{time.monotonic_ns()}", exchange=events.exchange_for(connection), routing_key="#")
    simple = connection.SimpleQueue(queue)

    def read(count: int, timeout: float = 5.0) -> list[tuple[str, dict, dict]]:
        found = []
        for _ in range(count):
            message = simple.get(timeout=timeout)
            message.ack()
            found.append((message.delivery_info["routing_key"], message.headers, message.payload))
        return found

    yield read
    simple.close()
    connection.release()


def test_task_and_worker_events_carry_celerys_fields(captured):
    dispatcher = events.EventDispatcher("w@host", enabled=True, heartbeat=2.0, url=URL)
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    message = TaskMessage(id="t-1", task="videos.add", args=(2, "x" * 300), kwargs={"k": 1}, retries=1,
                          eta=eta, expires=eta + timedelta(hours=1), parent_id="p-1", root_id="r-1")
    dispatcher.task_received(message)
    dispatcher.task_started(message, pid=4242)
    dispatcher.task_finished(message, Outcome(TaskState.SUCCESS, runtime=0.25, retval={"a": 1}))
    dispatcher.task_finished(message, Outcome(TaskState.FAILURE, exception=ValueError("bad"), traceback="Traceback..."))
    dispatcher.task_finished(message, Outcome(TaskState.RETRY, retval=ConnectionError("again")).slim())
    dispatcher.task_finished(message, Outcome(TaskState.REVOKED))
    dispatcher.task_revoked(message, expired=True)
    dispatcher.task_finished(message, Outcome(TaskState.RECEIVED, requeue=True))
    dispatcher.worker_event("worker-heartbeat", active=1, processed=7)
    got = captured(9)
    dispatcher.stop()

    keys = [key for key, _headers, _body in got]
    assert keys == ["task.received", "task.started", "task.succeeded", "task.failed", "task.retried",
                    "task.revoked", "task.revoked", "task.rejected", "worker.heartbeat"]
    bodies = [body for _key, _headers, body in got]
    assert all(headers == {"hostname": "w@host"} for _key, headers, _body in got)
    for body in bodies:
        assert body["hostname"] == "w@host" and body["utcoffset"] == events.utcoffset()
        assert isinstance(body["timestamp"], float) and isinstance(body["pid"], int)
    clocks = [body["clock"] for body in bodies]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks)

    received, started, succeeded, failed, retried, revoked, expired, rejected, beat = bodies
    assert {k: received[k] for k in ("type", "uuid", "name", "kwargs", "retries", "eta", "expires", "root_id",
                                     "parent_id")} == {
        "type": "task-received", "uuid": "t-1", "name": "videos.add", "kwargs": "{'k': 1}", "retries": 1,
        "eta": eta.isoformat(), "expires": (eta + timedelta(hours=1)).isoformat(), "root_id": "r-1",
        "parent_id": "p-1"}
    assert received["args"].startswith("(2, 'xxx") and len(received["args"]) < 300  # a bounded repr
    assert started["uuid"] == "t-1" and started["pid"] == 4242
    assert succeeded["result"] == "{'a': 1}" and succeeded["runtime"] == 0.25
    assert failed["exception"] == "ValueError('bad')" and failed["traceback"] == "Traceback..."
    assert retried["exception"] == "ConnectionError('again')"
    assert (revoked["terminated"], revoked["expired"]) == (True, False)
    assert (expired["terminated"], expired["expired"], expired["signum"]) == (False, True, None)
    assert rejected["requeue"] is True
    assert beat["freq"] == 2.0 and (beat["active"], beat["processed"]) == (1, 7)
    assert beat["sw_ident"] == "django-tasks-q" and beat["sw_ver"] and beat["sw_sys"]
    assert isinstance(beat["loadavg"], list)


def test_a_disabled_dispatcher_sends_nothing_and_starts_no_thread(captured):
    dispatcher = events.EventDispatcher("w@host", url=URL)
    dispatcher.task_started(TaskMessage(id="t-2", task="x"))
    assert dispatcher._thread is None
    dispatcher.enable()
    dispatcher.task_started(TaskMessage(id="t-3", task="x"))
    assert [body["uuid"] for _k, _h, body in captured(1)] == ["t-3"]
    dispatcher.disable()
    dispatcher.stop()


def test_utcoffset_agrees_with_celerys():
    from celery.utils.time import utcoffset

    assert events.utcoffset() == utcoffset()


def test_a_failing_publish_never_raises_and_is_logged_once(caplog):
    with socket_closed_port() as port:
        dispatcher = events.EventDispatcher("w@host", enabled=True, url=f"redis://127.0.0.1:{port}/0")
        with caplog.at_level(logging.ERROR, logger=events.__name__):
            for n in range(3):
                dispatcher.task_started(TaskMessage(id=f"t-{n}", task="x"))  # returns at once, never raises
            dispatcher.stop(timeout=30)
    assert dispatcher._dropped == 3
    errors = [r for r in caplog.records if "could not publish event task-started" in r.getMessage()]
    assert len(errors) == 1  # at most once per LOG_EVERY seconds


@pytest.mark.django_db(transaction=True)
def test_on_the_django_broker_events_become_rows_only_for_a_live_receiver(caplog):
    from django.utils import timezone as dj_timezone

    from django_tasks_q.models import BrokerBinding, BrokerMessage

    def publish(*ids: str) -> None:
        dispatcher = events.EventDispatcher("w@host", enabled=True, url="django://")
        assert dispatcher.enabled
        for task_id in ids:
            dispatcher.task_started(TaskMessage(id=task_id, task="x"))
        dispatcher.stop(timeout=10)  # returns once the thread has handled every event
        assert dispatcher._dropped == 0

    with caplog.at_level(logging.WARNING):
        publish("nobody-listens")  # no queue bound to celeryev: no row, no Unroutable, no log line
        assert BrokerMessage.objects.count() == 0 and caplog.records == []

        connection = Connection("django://")
        queue = Queue("taskevents.test", exchange=events.exchange_for(connection), routing_key="#")
        simple = connection.SimpleQueue(queue)
        publish("t-1", "t-2")
        got = [simple.get(timeout=5) for _ in range(2)]
        assert [(m.payload["type"], m.payload["uuid"]) for m in got] == [("task-started", "t-1"),
                                                                         ("task-started", "t-2")]
        assert caplog.records == []

        # a receiver that stopped reading (killed): its queue is deleted once an event sat in it a minute
        publish("t-3")
        assert events.django_listeners(simple.channel) == ["taskevents.test"]  # fresh: still live
        BrokerMessage.objects.filter(queue="taskevents.test").update(
            created_at=dj_timezone.now() - timedelta(seconds=events.STALE_AFTER + 1))
        assert events.django_listeners(simple.channel) == []
    assert not BrokerMessage.objects.filter(queue="taskevents.test").exists()
    assert not BrokerBinding.objects.filter(exchange=events.EXCHANGE_NAME).exists()
    assert "deleting event queue taskevents.test" in caplog.text
    simple.close()
    connection.release()


def test_slim_outcomes_keep_what_events_need():
    outcome = Outcome(TaskState.FAILURE, exception=KeyError("k"), traceback="tb", retval=None).slim()
    assert (outcome.exception, outcome.describe(), outcome.traceback) == (None, "KeyError('k')", "tb")
    long = Outcome(TaskState.SUCCESS, retval="y" * 5000).slim().describe()
    assert "..." in long and len(long) <= 1030


class socket_closed_port:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None
