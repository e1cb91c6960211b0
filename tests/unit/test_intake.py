"""``worker.intake.read``: a raw broker message becomes a Job, or a clear refusal (docs/reliability.md)."""

from __future__ import annotations

import json
import logging

import pytest
from kombu.message import Message

from django_tasks_q import AsyncResult, signals
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import NotRegistered
from django_tasks_q.worker import intake


class FakeChannel:
    no_ack_consumers = None

    def __init__(self):
        self.acked, self.rejected = [], []

    def basic_ack(self, tag, multiple=False):
        self.acked.append(tag)

    def basic_reject(self, tag, requeue=False):
        self.rejected.append((tag, requeue))


def raw(message: TaskMessage | None = None, *, headers=None, payload=None, content_type="application/json",
        signing_key=None, properties=None):
    channel = FakeChannel()
    if message is not None:
        encoded = message.encode("json", signing_key)
        headers = encoded.headers if headers is None else headers
        payload = encoded.payload if payload is None else payload
    kombu_message = Message(body=payload, delivery_tag="tag-1", content_type=content_type,
                            content_encoding="utf-8", headers=headers, channel=channel, accept=["application/json"],
                            properties=properties or {"priority": 3},
                            delivery_info={"exchange": "videos", "routing_key": "videos.key", "redelivered": True})
    return kombu_message, channel


@pytest.fixture
def refusals():
    seen = []

    def receiver(sender, **kwargs):
        seen.append((sender, kwargs["reason"]))

    signals.task_rejected.connect(receiver, weak=False)
    yield seen
    signals.task_rejected.disconnect(receiver)


def test_good_message_becomes_a_job():
    from testproject.videos.tasks import compress

    kombu_message, channel = raw(TaskMessage(id="in-1", task=compress.name, args=(5,)))
    job = intake.read(kombu_message, "videos")
    assert job is not None
    assert (job.message.id, job.message.args) == ("in-1", (5,))
    assert job.delivery_info == {"exchange": "videos", "routing_key": "videos.key", "queue": "videos",
                                 "priority": 3, "redelivered": True}
    assert job.acks_late is True  # compress has acks_late=True
    assert job.kombu_message is kombu_message
    assert channel.rejected == [] and channel.acked == []


def test_acks_late_falls_back_to_the_setting(settings):
    kombu_message, _ = raw(TaskMessage(id="in-2", task="testproject.videos.tasks.add", args=(1, 2)))
    assert intake.read(kombu_message, "default").acks_late is False
    settings.TASKS_Q = {**settings.TASKS_Q, "ACKS_LATE": True}
    kombu_message, _ = raw(TaskMessage(id="in-2", task="testproject.videos.tasks.add", args=(1, 2)))
    assert intake.read(kombu_message, "default").acks_late is True


@pytest.mark.django_db
def test_unknown_task_is_refused_and_recorded(refusals, caplog):
    kombu_message, channel = raw(TaskMessage(id="in-3", task="nowhere.tasks.ghost"))
    with caplog.at_level(logging.ERROR, logger="django_tasks_q"):
        assert intake.read(kombu_message, "default") is None
    assert channel.rejected == [("tag-1", False)]
    assert refusals[0][0] == "nowhere.tasks.ghost"
    assert isinstance(refusals[0][1], NotRegistered)
    assert "nowhere.tasks.ghost" in caplog.text and "in-3" in caplog.text
    result = AsyncResult("in-3")
    assert result.state == TaskState.FAILURE  # the caller's get() hears why instead of hanging
    with pytest.raises(Exception, match="nowhere.tasks.ghost"):
        result.get()


@pytest.mark.parametrize(("headers", "payload"), [
    ({"task": "testproject.videos.tasks.add", "id": "in-4"}, json.dumps({"args": [1, 2]})),
    ({"task": "testproject.videos.tasks.add", "id": "in-4"}, "not json at all"),
    ({"task": "testproject.videos.tasks.add"}, json.dumps([[1, 2], {}, {}])),
    ({"task": "testproject.videos.tasks.add", "id": "in-4", "retries": "x"}, json.dumps([[1, 2], {}, {}])),
])
def test_malformed_message_is_refused_not_raised(headers, payload, refusals):
    kombu_message, channel = raw(headers=headers, payload=payload)
    assert intake.read(kombu_message, "default") is None
    assert channel.rejected == [("tag-1", False)]
    assert len(refusals) == 1


def test_refused_content_type(refusals):
    kombu_message, channel = raw(headers={"task": "testproject.videos.tasks.add", "id": "in-5"},
                                 payload=b"\x80\x04K\x01.", content_type="application/x-python-serialize")
    assert intake.read(kombu_message, "default") is None
    assert channel.rejected == [("tag-1", False)]


def test_unsigned_message_is_refused_when_signing_is_on(settings, refusals, caplog):
    settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": "k3y"}
    kombu_message, channel = raw(TaskMessage(id="in-6", task="testproject.videos.tasks.add", args=(1, 2)))
    with caplog.at_level(logging.ERROR, logger="django_tasks_q"):
        assert intake.read(kombu_message, "default") is None
    assert channel.rejected == [("tag-1", False)]
    assert "unsigned" in caplog.text and "in-6" in caplog.text
    assert refusals == []  # an unverified message reaches no signal receiver


def test_signed_message_is_accepted_and_tampering_refused(settings, refusals):
    settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": "k3y"}
    message = TaskMessage(id="in-7", task="testproject.videos.tasks.add", args=(1, 2))
    kombu_message, _ = raw(message, signing_key="k3y")
    assert intake.read(kombu_message, "default") is not None

    signed = message.encode("json", "k3y")
    tampered, channel = raw(headers=signed.headers, payload=signed.payload.replace("[1, 2]", "[1, 3]"))
    assert intake.read(tampered, "default") is None
    assert channel.rejected == [("tag-1", False)]
    assert refusals == []
