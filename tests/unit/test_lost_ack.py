"""An early ack lost with the connection: the task still runs once, and the copy that comes back is acked.

A Redis killed while it syncs its append-only log has applied an ack it never
answered; the worker sees a connection error and cannot know whether the
message is gone. It must neither lose the task (the message may be gone) nor
run it twice (the message may come back). The broker's lost reply is the one
thing that cannot be produced on demand, so the ack here is kombu's real ack
on the in-process memory:// broker, followed by the error a dying server gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kombu import Connection

from django_tasks_q.broker.queues import get_queue
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.models import TaskResult
from django_tasks_q.worker.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)
ADD = "testproject.videos.tasks.add"


def publish(channel, message: TaskMessage) -> None:
    inbox = get_queue("lost-ack")
    prepared = channel.prepare_message(json.dumps(message.body()), None, "application/json", "utf-8",
                                       message.headers(), {})
    channel.basic_publish(prepared, exchange=inbox.exchange.name, routing_key=inbox.routing_key)


def ack_then_lose_the_reply(kombu_message) -> None:
    real_ack = kombu_message.ack

    def ack(*args, **kwargs):
        real_ack(*args, **kwargs)  # the broker has it ...
        raise ConnectionError("Connection closed by server.")  # ... and died before answering

    kombu_message.ack = ack


@contextmanager
def worker_on_memory() -> Iterator[tuple[Worker, Any]]:
    """A solo worker of the "lost-ack" queue on the in-process memory:// broker, and its channel."""
    worker = Worker(queues=["lost-ack"], pool="solo", hostname="lost-ack@host", heartbeat=0)
    with Connection("memory://") as conn:
        channel = conn.channel()
        queue = get_queue("lost-ack")(channel)
        queue.declare()
        queue.purge()
        worker._channel = channel
        yield worker, channel


def test_a_task_whose_ack_was_lost_runs_once(caplog):
    with worker_on_memory() as (worker, channel):
        message = TaskMessage(id="lost-ack-1", task=ADD, args=(2, 3))
        publish(channel, message)
        first = channel.basic_get("lost-ack")
        ack_then_lose_the_reply(first)
        worker._on_message("lost-ack", first)
        with pytest.raises(ConnectionError):
            worker._tick()  # the main loop reconnects on this
        for job, outcome in worker.pool.poll(0):
            worker._finish(job, outcome)
        row = TaskResult.objects.get(task_id="lost-ack-1")
        assert row.state == TaskState.SUCCESS and row.result == 5  # it ran although its ack failed

        publish(channel, message)  # the ack had not been taken after all: the broker gives the copy back
        copy = channel.basic_get("lost-ack")
        worker._on_message("lost-ack", copy)
        assert copy.acknowledged and not worker.ready  # acked, not queued to run again
        assert "acked, not run again" in caplog.text

        retry = TaskMessage(id="lost-ack-1", task=ADD, args=(2, 3), retries=1)  # a retry is a new attempt
        publish(channel, retry)
        worker._on_message("lost-ack", channel.basic_get("lost-ack"))
        assert len(worker.ready) == 1


def test_a_redelivered_message_whose_task_already_ended_is_acked_not_run(caplog):
    """What a prefork parent relies on: it records a task whose child it killed before the broker gives the
    acks_late message back; the copy finds the final result and is dropped. A task still STARTED (its worker
    died under it) runs again, and so does a finished task sent anew (not redelivered)."""
    TaskResult.objects.create(task_id="ended-1", task_name=ADD, state=TaskState.FAILURE)
    TaskResult.objects.create(task_id="started-1", task_name=ADD, state=TaskState.STARTED)
    with worker_on_memory() as (worker, channel):
        def deliver(task_id: str, redelivered: bool):
            publish(channel, TaskMessage(id=task_id, task=ADD, args=(1, 1)))
            delivered = channel.basic_get("lost-ack")
            delivered.delivery_info["redelivered"] = redelivered
            worker._on_message("lost-ack", delivered)
            return delivered

        ended = deliver("ended-1", redelivered=True)
        assert ended.acknowledged and not worker.ready
        assert "already ended FAILURE; acked, not run again" in caplog.text
        assert TaskResult.objects.get(task_id="ended-1").state == TaskState.FAILURE

        lost = deliver("started-1", redelivered=True)
        assert not lost.acknowledged and [job.message.id for job in worker.ready] == ["started-1"]

        worker.ready.clear()
        again = deliver("ended-1", redelivered=False)  # sent again on purpose: runs
        assert not again.acknowledged and [job.message.id for job in worker.ready] == ["ended-1"]
