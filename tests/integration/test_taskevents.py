"""``manage.py taskevents`` against real workers: events in, rows and a live view out.

Per broker (django://, Redis, RabbitMQ): a ``taskevents`` subprocess that stores and
shows, then a ``taskworker -E`` subprocess (one-second heartbeat). A
succeeding and a failing task must show up as raw ``TaskEvent`` rows (with
the task name filled in on events that carry only the id), as per-minute
``TaskActivity`` counts (the failure counted as failed), in
``activity_series`` and as lines of the live view. A Celery worker's
heartbeat, published by hand on the same exchange, must create its
``Worker`` row, while our worker's own row keeps what our worker wrote.
On a private Redis that is crashed and restarted, ``taskevents`` must
reconnect and keep recording; SIGTERM must end it with exit code 0.
"""

from __future__ import annotations

import signal
import sys
import time
from datetime import timedelta

import pytest
from kombu import Producer

from django_tasks_q.broker import connection as broker_connection
from django_tasks_q.broker.connection import new_connection
from django_tasks_q.eventstore import activity_series
from django_tasks_q.models import TaskActivity, TaskEvent, Worker
from django_tasks_q.worker.events import exchange_for
from testproject.videos.tasks import add, fail
from tests import servers
from tests.integration.test_spine import wait_until
from tests.workers import ROOT, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "taskevents-tests"
FAST = {"TASKS_Q_WORKER_HEARTBEAT": "1"}


class EventsProcess(WorkerProcess):
    """``manage.py taskevents`` in a subprocess (WorkerProcess's start/stop/output, another command)."""

    ready_text = "taskevents ready"

    def __init__(self, broker_url: str, *args: str, env: dict[str, str] | None = None):
        super().__init__(broker_url, env=env)
        self.args = [sys.executable, str(ROOT / "manage.py"), "taskevents", *args]


@pytest.fixture(scope="module", params=["django", "redis", "amqp"])
def events_broker(request, django_db_setup):
    if request.param == "django":
        return "django://"
    return request.getfixturevalue(f"{request.param}_url")


def publish_celery_heartbeat(url: str, hostname: str) -> None:
    """What a Celery worker's event dispatcher sends every two seconds."""
    with new_connection(url) as conn:
        producer = Producer(conn.channel(), exchange=exchange_for(conn), auto_declare=True)
        producer.publish({"type": "worker-heartbeat", "hostname": hostname, "timestamp": time.time(), "utcoffset": 0,
                          "pid": 4321, "clock": 7, "freq": 2.0, "sw_ident": "py-celery", "sw_ver": "5.5.0",
                          "sw_sys": "Linux", "active": 0, "processed": 3, "loadavg": [0.1, 0.2, 0.3]},
                         routing_key="worker.heartbeat", serializer="json", headers={"hostname": hostname})


def test_taskevents_records_and_shows_a_workers_events(events_broker, broker):
    broker(events_broker)
    name = f"ev-{events_broker.split(':')[0]}@tests"
    with EventsProcess(events_broker, "--freq", "0.2") as recorder:
        with WorkerProcess(events_broker, "-E", "-P", "threads", "-c", "2", "-Q", QUEUE, "-n", name,
                           env=FAST):
            ok, bad = add.apply_async((2, 3), queue=QUEUE), fail.apply_async(("nope",), queue=QUEUE)
            assert ok.get(timeout=20) == 5
            wait_until(lambda: bad.state == "FAILURE", timeout=20)
            publish_celery_heartbeat(events_broker, "celery-side@box")

            succeeded = wait_until(lambda: TaskEvent.objects.filter(task_id=ok.id, event="task-succeeded").first(),
                                   timeout=15)
            failed = wait_until(lambda: TaskEvent.objects.filter(task_id=bad.id, event="task-failed").first(),
                                timeout=15)
            celery_row = wait_until(lambda: Worker.objects.filter(hostname="celery-side@box").first(), timeout=15)
            wait_until(lambda: TaskEvent.objects.filter(hostname=name, event="worker-online").exists(), timeout=5)

        # the raw rows: names filled in from task-received, runtime and exception kept
        assert succeeded.task_name == add.name and succeeded.state == "SUCCESS" and succeeded.hostname == name
        assert 0 <= succeeded.runtime < 10 and succeeded.data["result"] == "5"
        assert failed.task_name == fail.name and "nope" in failed.exception and "ValueError" in failed.traceback
        assert list(TaskEvent.objects.filter(task_id=ok.id).order_by("timestamp").values_list("event", flat=True)) \
            == ["task-received", "task-started", "task-succeeded"]
        # the roll-ups and the dashboard's read of them
        assert sum(TaskActivity.objects.filter(task_name=add.name).values_list("succeeded", flat=True)) == 1
        fails = TaskActivity.objects.filter(task_name=fail.name)
        assert sum(fails.values_list("failed", flat=True)) == 1 and sum(fails.values_list("succeeded", flat=True)) == 0
        series = activity_series(timedelta(minutes=10), 10)
        assert sum(s["succeeded"] for s in series) == 1 and sum(s["failed"] for s in series) == 1
        # worker rows: the Celery worker's from its event, ours as our worker wrote it
        assert (celery_row.pid, celery_row.version, celery_row.processed) == (4321, "py-celery 5.5.0", 3)
        ours = Worker.objects.get(hostname=name)
        assert ours.queues == [QUEUE] and ours.pool == "threads" and ours.stopped_at is not None
        # the live view
        view = recorder.output()
        assert any("task-succeeded" in line and f"{add.name}[{ok.id}]" in line and name in line
                   for line in view.splitlines()), view
        assert any("task-failed" in line and f"{fail.name}[{bad.id}]" in line and "nope" in line
                   for line in view.splitlines()), view
        assert recorder.stop() == 0  # SIGTERM: flush and exit 0
        assert "taskevents stopped" in recorder.output()


def test_taskevents_survives_a_broker_outage(broker, transactional_db):
    server = servers.RedisServer()
    with servers.serve(server) as url:
        broker(url)
        with EventsProcess(url, "--quiet", "--freq", "0.2") as recorder, \
                WorkerProcess(url, "-E", "-P", "threads", "-c", "1", "-Q", QUEUE, "-n", "outage@tests",
                              env={**FAST, "TASKS_Q_BROKER_CONNECTION_TIMEOUT": "1"}) as worker:
            before = add.apply_async((1, 1), queue=QUEUE)
            assert before.get(timeout=20) == 2
            wait_until(lambda: TaskEvent.objects.filter(task_id=before.id, event="task-succeeded").exists(),
                       timeout=20)  # events in flight during the outage are lost (transient), as in Celery
            server.crash()
            recorder.wait_for("lost its broker connection", timeout=20)
            server.start_again()
            wait_until(lambda: recorder.output().count("taskevents ready") >= 2, timeout=40, interval=0.2)
            worker.wait_for("ready: consuming", timeout=5)
            wait_until(lambda: worker.output().count("ready: consuming") >= 2, timeout=40, interval=0.2)
            broker_connection.reset()
            sent = []

            def recorded_again() -> bool:
                # the worker's event sender drops events for a moment after its first failed publish: send
                # tasks until one of them is recorded
                sent.append(add.apply_async((2, 2), queue=QUEUE))
                assert sent[-1].get(timeout=20) == 4
                return TaskEvent.objects.filter(task_id__in=[r.id for r in sent], event="task-succeeded").exists()

            wait_until(recorded_again, timeout=40, interval=0.5)
            recorder.signal(signal.SIGINT)  # Ctrl-C
            recorder.process.wait(15)
            assert recorder.process.returncode == 0
            assert "task-succeeded" not in recorder.output()  # --quiet: no live view
        # what it held at Ctrl-C was written: the roll-ups agree with the raw rows
        raw = TaskEvent.objects.filter(event="task-succeeded", task_name=add.name).count()
        assert raw >= 2
        assert sum(TaskActivity.objects.filter(task_name=add.name).values_list("succeeded", flat=True)) == raw
