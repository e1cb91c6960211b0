"""Refused messages are copied to the dead-letter queue, then rejected (on kombu's in-process memory:// broker)."""

from __future__ import annotations

import json
import logging
from functools import partial

import pytest
from kombu import Connection, Consumer

from django_tasks_q.broker.queues import get_queue
from django_tasks_q.core.states import TaskState
from django_tasks_q.results.backend import get_backend
from django_tasks_q.worker import deadletter, intake

from .test_intake import raw

pytestmark = pytest.mark.django_db
ADD = "testproject.videos.tasks.add"


@pytest.fixture
def channel():
    with Connection("memory://") as conn:
        channel = conn.channel()
        for name in ("inbox", "tasksq.dead", "other.dead"):
            queue = get_queue(name)(channel)
            queue.declare()
            queue.purge()
        yield channel


def put(channel, body: bytes, headers, content_type="application/json"):
    inbox = get_queue("inbox")
    message = channel.prepare_message(body, None, content_type, "utf-8", headers, {})
    channel.basic_publish(message, exchange=inbox.exchange.name, routing_key=inbox.routing_key)


def take(channel, queue: str):
    message = channel.basic_get(queue, no_ack=True)
    return message


POLICY = intake.Policy(signing_keys=(), acks_late=False, dead_letter_queue="tasksq.dead")


def test_a_refused_message_is_copied_then_rejected(channel, caplog):
    body = b'{"not": "a v2 body"}'
    put(channel, body, {"task": ADD, "id": "dl-1", "x-mine": "kept"})
    message = channel.basic_get("inbox")
    with caplog.at_level(logging.ERROR):
        assert intake.read(message, "inbox", POLICY) is None
    assert "refused message testproject.videos.tasks.add[dl-1] from queue inbox" in caplog.text
    assert message.acknowledged and take(channel, "inbox") is None  # rejected, not requeued
    copy = take(channel, "tasksq.dead")
    assert copy.body == body and copy.content_type == "application/json"
    assert copy.headers["task"] == ADD and copy.headers["id"] == "dl-1" and copy.headers["x-mine"] == "kept"
    assert "body must be [args, kwargs, embed]" in copy.headers[deadletter.REFUSED_REASON]
    assert copy.headers[deadletter.REFUSED_QUEUE] == "inbox"
    assert copy.headers[deadletter.REFUSED_AT].endswith("+00:00")
    assert get_backend().meta("dl-1").state == TaskState.FAILURE


def test_none_disables_the_copy(channel):
    put(channel, b"not json", {"task": ADD, "id": "dl-2"})
    message = channel.basic_get("inbox")
    assert intake.read(message, "inbox", intake.Policy((), False, None)) is None
    assert message.acknowledged and take(channel, "tasksq.dead") is None


def test_a_message_refused_on_the_dead_letter_queue_is_not_copied_onto_itself(channel):
    put(channel, b"not json", {"task": ADD, "id": "dl-3"})
    message = channel.basic_get("inbox")
    assert intake.read(message, "tasksq.dead", POLICY) is None  # a worker told to consume -Q tasksq.dead
    assert message.acknowledged and take(channel, "tasksq.dead") is None


def test_a_failed_copy_is_logged_and_the_message_still_rejected(caplog):
    message, fake = raw(headers={"task": ADD, "id": "dl-4"}, payload="not json")  # a channel that cannot publish
    with caplog.at_level(logging.ERROR):
        assert intake.read(message, "default", POLICY) is None
    assert "could not copy refused message to dead-letter queue 'tasksq.dead'" in caplog.text
    assert fake.rejected == [("tag-1", False)]
    assert get_backend().meta("dl-4").state == TaskState.FAILURE


def test_headers_that_are_not_a_mapping_are_refused_not_raised(channel, caplog):
    """kombu builds the message before any consumer code runs; the guarded channel keeps it refusable."""
    intake.guard_channel(channel)
    put(channel, json.dumps([[1, 2], {}, {}]).encode(), ["task", ADD])
    seen = []
    consumer = Consumer(channel, [get_queue("inbox")], on_message=seen.append, accept=["json"],
                        on_decode_error=partial(intake.undecodable, "inbox", POLICY))
    with caplog.at_level(logging.ERROR), consumer:
        channel.connection.client.drain_events(timeout=1)
    assert seen == []
    assert "refused message <no task name>[<no id>] from queue inbox" in caplog.text
    assert "headers must be a mapping, got list" in caplog.text
    assert take(channel, "inbox") is None
    copy = take(channel, "tasksq.dead")
    assert copy.headers[deadletter.REFUSED_HEADERS] == repr(["task", ADD])


def test_a_log_line_stays_short_whatever_the_headers(caplog):
    message, fake = raw(headers={"task": "t" * 100_000, "id": "bad\x00id"}, payload=json.dumps([[], {}, {}]))
    with caplog.at_level(logging.ERROR):
        assert intake.read(message, "default", intake.Policy((), False, None)) is None
    line = next(r.getMessage() for r in caplog.records if "refused message" in r.getMessage())
    assert len(line) < 1500 and "[" + repr("bad\x00id") + "]" in line
    assert fake.rejected == [("tag-1", False)]
