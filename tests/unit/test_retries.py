"""``self.retry()`` through ``execute()``: order of writes, what the next attempt carries, limits."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from django_tasks_q import task
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import BrokerUnavailable
from django_tasks_q.models import TaskResult
from django_tasks_q.worker.executor import execute

pytestmark = pytest.mark.django_db(transaction=True)

DELIVERY = {"queue": "videos", "priority": 7}


@pytest.fixture
def published(monkeypatch):
    """Messages sent, each with the task's stored state at the moment it was published."""
    sent = []

    def capture(encoded, route, *, task_id, **more):
        row = TaskResult.objects.filter(task_id=task_id).first()
        message = TaskMessage.from_wire(json.loads(json.dumps(encoded.headers)), json.loads(encoded.payload))
        sent.append({"message": message, "route": route, "state_then": row.state if row else None})

    monkeypatch.setattr("django_tasks_q.core.calling.publish", capture)
    return sent


def test_retry_is_stored_before_the_next_attempt_is_sent(published, clean_registry):
    @task(bind=True, name="unit.again", max_retries=None)
    def again(self):
        raise self.retry(exc=ConnectionError("down"), countdown=5)

    link = {"task": "testproject.videos.tasks.add", "args": [1], "kwargs": {}, "options": {}}
    expires = timezone.now() + timedelta(hours=1)
    message = TaskMessage(id="rt-1", task="unit.again", retries=7, time_limit=30, soft_time_limit=20,
                          callbacks=[link], errbacks=[link], expires=expires, root_id="root", parent_id="parent")
    assert execute(message, DELIVERY, "unit@host").state == TaskState.RETRY

    (sent,) = published
    assert sent["state_then"] == TaskState.RETRY  # a quick next attempt cannot be overwritten by a late RETRY
    nxt = sent["message"]
    assert (nxt.id, nxt.retries) == ("rt-1", 8)  # no limit: max_retries=None
    assert (nxt.time_limit, nxt.soft_time_limit) == (30, 20)
    assert nxt.callbacks == [link] and nxt.errbacks == [link]  # a chain survives a retry
    assert nxt.expires == expires
    assert (nxt.root_id, nxt.parent_id) == ("root", "parent")
    assert nxt.eta is not None and nxt.eta > timezone.now() + timedelta(seconds=3)
    assert sent["route"].queue == "videos" and sent["route"].priority == 7
    row = TaskResult.objects.get(task_id="rt-1")
    assert row.state == TaskState.RETRY and row.retries == 7
    assert row.result["exc_type"] == "ConnectionError"


def test_exhausted_retries_fail_with_the_cause_named(published, clean_registry):
    @task(bind=True, name="unit.tired", max_retries=1)
    def tired(self):
        raise self.retry(exc=KeyError("gone"))

    outcome = execute(TaskMessage(id="rt-2", task="unit.tired", retries=1), DELIVERY, "unit@host")
    assert outcome.state == TaskState.FAILURE and published == []
    row = TaskResult.objects.get(task_id="rt-2")
    assert row.result["exc_type"] == "MaxRetriesExceededError"
    assert row.result["exc_message"] == ["task unit.tired [rt-2] gave up after 1 retries: KeyError: 'gone'"]
    assert "KeyError: 'gone'" in row.traceback and "direct cause" in row.traceback
    assert isinstance(outcome.exception.__cause__, KeyError)


def test_per_call_max_retries_overrides_the_task(published, clean_registry):
    @task(bind=True, name="unit.override", max_retries=10)
    def override(self):
        raise self.retry(max_retries=2, countdown=0)

    assert execute(TaskMessage(id="rt-3", task="unit.override", retries=1), DELIVERY, "h").state == TaskState.RETRY
    assert execute(TaskMessage(id="rt-3", task="unit.override", retries=2), DELIVERY, "h").state == TaskState.FAILURE


def test_a_retry_that_cannot_be_sent_is_a_failure_not_a_silent_drop(monkeypatch, clean_registry):
    def broken(*args, **kwargs):
        raise BrokerUnavailable("broker down")

    monkeypatch.setattr("django_tasks_q.core.calling.publish", broken)

    @task(bind=True, name="unit.unsent")
    def unsent(self):
        raise self.retry(countdown=0)

    assert execute(TaskMessage(id="rt-4", task="unit.unsent"), DELIVERY, "h").state == TaskState.FAILURE
    row = TaskResult.objects.get(task_id="rt-4")
    assert row.state == TaskState.FAILURE and row.result["exc_type"] == "BrokerUnavailable"


def test_autoretry_sends_with_the_backoff_countdown(published, clean_registry):
    @task(name="unit.auto", autoretry_for=(OSError,), retry_backoff=3, retry_jitter=False)
    def auto():
        raise OSError("flaky disk")

    before = timezone.now()
    assert execute(TaskMessage(id="rt-5", task="unit.auto", retries=2), DELIVERY, "h").state == TaskState.RETRY
    (sent,) = published
    delay = (sent["message"].eta - before).total_seconds()
    assert 12 <= delay < 13  # 3 * 2**2
