"""The spine on every real broker: send, run in ``manage.py taskworker``, read the result.

Each test runs against the embedded ``django://`` broker, Redis and RabbitMQ,
with one threads-pool worker subprocess per broker.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from django_tasks_q import AsyncResult, send_task
from django_tasks_q.exceptions import EncodeError, NotRegistered, TaskRevokedError
from django_tasks_q.models import TaskResult
from testproject.videos.tasks import add, compress, fail, whoami

from .broker_tools import publish_raw, queue_size


def wait_until(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def test_delay_get_and_recorded_states(worker, use_broker):
    result = add.delay(2, 3)
    assert result.get(timeout=15) == 5
    assert result.state == "SUCCESS" and result.successful() and result.ready()
    row = TaskResult.objects.get(task_id=result.id)
    assert row.task_name == "testproject.videos.tasks.add"
    assert row.args == [2, 3] and row.result == 5
    assert row.worker.startswith("spine@") and row.queue == "default"
    # RECEIVED and STARTED were recorded on the way, not only the final state
    assert row.date_received and row.date_started and row.date_done
    assert row.date_received <= row.date_started <= row.date_done
    assert row.runtime is not None and row.runtime >= 0


def test_failure_reraises_the_tasks_own_exception(worker, use_broker):
    result = fail.delay("bad input 42")
    with pytest.raises(ValueError, match="bad input 42"):
        result.get(timeout=15)
    assert result.failed() and result.state == "FAILURE"
    assert "ValueError: bad input 42" in result.traceback
    assert isinstance(result.get(propagate=False), ValueError)


def test_progress_state_is_visible_while_running(worker, use_broker):
    result = compress.delay(7, steps=4, delay=0.4)
    info = wait_until(lambda: result.state == "PROGRESS" and result.info, timeout=15)
    assert info["total"] == 4 and 1 <= info["current"] <= 4
    assert result.get(timeout=15)["video_id"] == 7
    assert TaskResult.objects.get(task_id=result.id).queue == "videos"


def test_countdown_runs_at_its_time(worker, use_broker):
    sent = time.monotonic()
    result = whoami.apply_async(countdown=2)
    time.sleep(0.8)
    assert result.state in ("PENDING", "RECEIVED")
    value = result.get(timeout=15)
    assert time.monotonic() - sent >= 1.9
    assert value["eta"] is not None


def test_expired_task_is_revoked_without_running(worker, use_broker):
    result = add.apply_async((1, 1), countdown=1.5, expires=timezone.now() + timedelta(seconds=0.5))
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=15)
    assert result.state == "REVOKED"
    assert TaskResult.objects.get(task_id=result.id).date_started is None


def test_unknown_task_is_refused_and_worker_keeps_serving(worker, use_broker):
    result = send_task("no.such.task", args=[1])
    with pytest.raises(NotRegistered, match="no.such.task"):
        result.get(timeout=15)
    worker.wait_for("no.such.task")
    assert add.delay(1, 2).get(timeout=15) == 3


@pytest.mark.parametrize("body, content_type, why", [
    (b'{"not": "a protocol v2 body"}', "application/json", "body must be"),
    (b"\x80\x04\x95 not json", "application/json", "refused message"),
    (b"cos\nsystem\n(S'echo pwned'\ntR.", "application/x-python-serialize", "refused message"),
])
def test_malformed_messages_are_refused_and_nothing_runs(worker, use_broker, body, content_type, why):
    task_id = str(uuid.uuid4())
    publish_raw(use_broker, "default", body, headers={"task": "testproject.videos.tasks.add", "id": task_id},
                content_type=content_type, content_encoding="binary")
    worker.wait_for(task_id)
    assert why in worker.output()
    refused = AsyncResult(task_id)
    # the caller hears why instead of waiting forever; nothing ran
    with pytest.raises(Exception) as excinfo:
        refused.get(timeout=15)
    assert refused.state == "FAILURE" and type(excinfo.value).__name__ in (
        "InvalidMessage", "DecodeError", "ContentDisallowed")
    assert TaskResult.objects.get(task_id=task_id).date_started is None
    assert add.delay(2, 2).get(timeout=15) == 4


def test_wrong_arity_is_a_failure_naming_the_task(worker, use_broker):
    with pytest.raises(TypeError, match="testproject.videos.tasks.add called with wrong arguments"):
        add.delay(1).get(timeout=15)


def test_unserialisable_args_fail_before_anything_is_sent(use_broker):
    before = queue_size(use_broker, "unconsumed")
    with pytest.raises(EncodeError, match="testproject.videos.tasks.add"):
        add.apply_async((object(), 1), queue="unconsumed")
    assert queue_size(use_broker, "unconsumed") == before


def test_send_task_by_name_with_options(worker, use_broker):
    task_id = f"custom-{uuid.uuid4()}"
    result = send_task("testproject.videos.tasks.whoami", task_id=task_id, queue="videos", priority=5,
                       headers={"x-trace": "abc"})
    assert result.id == task_id
    value = result.get(timeout=15)
    assert value["id"] == task_id and value["queue"] == "videos"


def test_delay_on_commit_sends_only_after_commit(worker, use_broker):
    before = TaskResult.objects.count()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            add.delay_on_commit(100, 1)
            raise RuntimeError("rolled back")
    with transaction.atomic():
        add.delay_on_commit(100, 2)
        time.sleep(0.5)
        assert TaskResult.objects.count() == before  # not sent yet
    row = wait_until(lambda: TaskResult.objects.filter(args=[100, 2], state="SUCCESS").first(), timeout=15)
    assert row.result == 102
    time.sleep(0.5)
    assert not TaskResult.objects.filter(args=[100, 1]).exists()


def test_delay_on_commit_sends_the_committed_calls_together(worker, use_broker, broker_url):
    tag = uuid.uuid4().int % 10**9
    pushes = _lpush_count(broker_url)
    with transaction.atomic():
        for number in range(6):
            add.delay_on_commit(tag, number)
        try:
            with transaction.atomic():
                add.delay_on_commit(tag, -1)
                raise RuntimeError("this savepoint rolls back")
        except RuntimeError:
            pass
        add.delay_on_commit(tag, 6)
    for number in range(7):
        wait_until(lambda: TaskResult.objects.filter(args=[tag, number], state="SUCCESS").exists(), timeout=15)
    if pushes is not None:  # one LPUSH per message and one per wake token when sent one by one: 14
        assert _lpush_count(broker_url) - pushes <= 4  # the first message (2), then the rest in one batch (2)
    time.sleep(0.5)
    assert not TaskResult.objects.filter(args=[tag, -1]).exists()


def _lpush_count(broker_url: str) -> int | None:
    """How many LPUSH commands the Redis behind ``broker_url`` has run (None: not Redis)."""
    if not broker_url.startswith("redis://"):
        return None
    import redis

    stats = redis.Redis.from_url(broker_url).info("commandstats")
    return stats.get("cmdstat_lpush", {}).get("calls", 0)


def test_queue_isolation_only_named_queues_are_consumed(broker_url, use_broker):
    result = send_task("reports.build", args=["2026-11-22"])
    assert result.get.__self__.state == "PENDING"
    time.sleep(1.0)
    assert result.state == "PENDING"  # the module's worker consumes default,videos only
    from tests.workers import WorkerProcess

    with WorkerProcess(broker_url, "-Q", "reports", "-P", "solo", "-n", "reports@%h"):
        assert result.get(timeout=15)["day"] == "2026-11-22"
    assert TaskResult.objects.get(task_id=result.id).worker.startswith("reports@")
