"""Delayed delivery: far-off countdown/eta tasks wait in the broker, not in a worker.

Each test runs on the three real brokers. ``ETA_HOLD_MAX`` is 1 second here
(30 by default), so a task a few seconds out is already "far": it is parked
in the broker's delayed store, comes back when due, and runs once, on time.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.utils import timezone

from django_tasks_q.broker import delayed
from django_tasks_q.broker.connection import new_connection
from django_tasks_q.broker.queues import get_queue
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.models import BrokerMessage
from testproject.videos.tasks import mark
from tests.workers import WorkerProcess

from .broker_tools import queue_size
from .test_spine import wait_until

HOLD = {"TASKS_Q_ETA_HOLD_MAX": "1"}


@pytest.fixture(params=["django", "redis", "amqp"])
def url(request, broker, transactional_db):
    url = "django://" if request.param == "django" else request.getfixturevalue(f"{request.param}_url")
    broker(url, ETA_HOLD_MAX=1)
    yield url
    _clear_parked(url)


def parked(url: str) -> int:
    """How many messages wait in the broker's delayed store."""
    if url.startswith("django"):
        return BrokerMessage.objects.filter(visible_at__isnull=False).count()
    if url.startswith("redis"):
        return redis.Redis.from_url(url).zcard(delayed.REDIS_KEY)
    with new_connection(url) as conn:
        channel = conn.default_channel
        return sum(channel.queue_declare(delayed.level_name(level, delayed.AMQP_PREFIX), passive=True).message_count
                   for level in range(delayed.MAX_NUMBER_OF_BITS_TO_USE))


def _clear_parked(url: str) -> None:
    if url.startswith("redis"):
        redis.Redis.from_url(url).delete(delayed.REDIS_KEY)
    elif url.startswith("amqp"):
        with new_connection(url) as conn:
            for level in range(delayed.MAX_NUMBER_OF_BITS_TO_USE):
                conn.default_channel.queue_purge(delayed.level_name(level, delayed.AMQP_PREFIX))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def runs(path: Path) -> list[float]:
    """When the ``mark`` task ran, once per line."""
    return [float(line.split()[1]) for line in path.read_text().splitlines()] if path.exists() else []


def test_far_task_is_parked_survives_worker_restarts_and_runs_once_on_time(url, tmp_path):
    path = tmp_path / "runs"
    waiting = queue_size(url, "default")  # (another test in this process may have left one)
    due = time.time() + 6
    result = mark.apply_async((str(path),), countdown=6)
    assert parked(url) == 1, "the sender parks a task due later than ETA_HOLD_MAX"
    assert queue_size(url, "default") == waiting
    with WorkerProcess(url, "-P", "solo", "-n", "first@%h", env=HOLD):
        time.sleep(1)  # a worker comes and goes before the task is due: nothing is held or lost
    assert parked(url) == 1 and not runs(path)
    with WorkerProcess(url, "-P", "solo", "-n", "second@%h", env=HOLD) as worker:
        assert result.get(timeout=20) == "ran"
        time.sleep(1)
        out = worker.output()
    [ran_at] = runs(path)
    assert due - 0.3 <= ran_at <= due + 3, f"ran {ran_at - due:+.2f}s from its eta"
    assert parked(url) == 0
    assert out.count(f"[{result.id}] succeeded") == 1


def _publish_raw(url: str, queue_name: str, messages: list[TaskMessage]) -> None:
    """Publish as a Celery client would: straight to the queue, eta in the headers, nothing parked."""
    queue = get_queue(queue_name)
    with new_connection(url) as conn:
        producer = conn.Producer()
        for index, message in enumerate(messages):
            encoded = message.encode("json")
            producer.publish(encoded.payload, exchange=queue.exchange, routing_key=queue.routing_key,
                             headers=encoded.headers, content_type=encoded.content_type,
                             content_encoding=encoded.content_encoding, declare=[queue] if not index else [])


def test_worker_parks_far_tasks_it_receives_and_does_not_grow(url, tmp_path):
    """A Celery client does not park: the worker parks what it receives, holding none of it.

    3,000 on Redis, where holding them would cost about 25 MB; 500 on the
    others, where the worker's one-by-one parking is slower (the
    sender parks on those brokers in practice: only our own senders use
    ``django://``).
    """
    count = 3_000 if url.startswith("redis") else 500
    path = tmp_path / "runs"
    with WorkerProcess(url, "-P", "solo", "-Q", "parking", "-n", "parker@%h", env=HOLD) as worker:
        time.sleep(0.5)
        before = rss_kb(worker.process.pid)
        week = timezone.now() + timedelta(days=7)
        _publish_raw(url, "parking", [TaskMessage(id=str(uuid.uuid4()), task="testproject.videos.tasks.add",
                                                  args=(1, 2), eta=week) for _ in range(count)])
        wait_until(lambda: parked(url) >= count and queue_size(url, "parking") == 0, timeout=90)
        grown = rss_kb(worker.process.pid) - before
        assert grown < 15_000, f"the worker grew by {grown} KB while parking {count} tasks"
        assert "parked in the broker" in worker.output()
        due = time.time() + 3
        _publish_raw(url, "parking", [TaskMessage(id=str(uuid.uuid4()), task="testproject.videos.tasks.mark",
                                                  args=(str(path),), eta=timezone.now() + timedelta(seconds=3))])
        wait_until(lambda: runs(path), timeout=20)
        time.sleep(0.5)
    [ran_at] = runs(path)
    assert due - 0.3 <= ran_at <= due + 3, f"ran {ran_at - due:+.2f}s from its eta"
    assert parked(url) == count
