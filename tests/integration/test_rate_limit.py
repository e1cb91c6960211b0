"""``rate_limit`` holds across the fleet: two real worker processes share one limit.

``limited`` (rate_limit="5/s") appends its start time to a file; whichever
worker runs it, no one-second window may hold more than five starts. The
shared slot lives in Redis on ``redis://`` and in the ``RateLimitBucket``
table on ``django://`` and ``amqp://`` (so RabbitMQ runs the ORM store with a
third transport's delivery pattern).
"""

from __future__ import annotations

import time

import pytest

from django_tasks_q.broker.connection import reset as reset_connection
from django_tasks_q.models import RateLimitBucket, TaskResult
from testproject.videos.tasks import add, limited
from tests.workers import WorkerProcess

from .broker_tools import queue_size

TASKS = 20
RATE = 5  # per second, as declared on ``limited``
#: a task can start a little after its slot when the machine is busy, which brings it closer to the
#: next ones: allow that much. A per-worker limit (10/s from two workers) would still break every window.
TOLERANCE = 0.15


@pytest.fixture(params=["django", "redis", "amqp"])
def broker(request, settings, transactional_db):
    url = "django://" if request.param == "django" else request.getfixturevalue(f"{request.param}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    reset_connection()
    yield url
    reset_connection()


def most_starts_in_one_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1.0 - TOLERANCE) for start in times)


def test_rate_limit_is_shared_by_two_workers(broker, tmp_path):
    path = tmp_path / "starts"
    args = ("-P", "threads", "-c", "2", "--prefetch-multiplier", "1")
    env = {"TASKS_Q_TRACK_STARTED": "false"}  # no STARTED write between the slot and the time the task takes
    with WorkerProcess(broker, *args, "-n", "one@%h", env=env) as one, \
            WorkerProcess(broker, *args, "-n", "two@%h", env=env) as two:
        sent = time.monotonic()
        results = [limited.delay(str(path), f"n{i}") for i in range(TASKS)]
        time.sleep(1.0)
        # Held jobs stay unacked inside each worker's prefetch window (2 each, plus at most 2
        # being started): the rest waits in the broker instead of being hoarded by one worker.
        waiting, started = queue_size(broker, "default"), len(path.read_text().splitlines())
        assert waiting + started >= TASKS - 8, (waiting, started)
        assert [r.get(timeout=30) for r in results] == [f"n{i}" for i in range(TASKS)]
        elapsed = time.monotonic() - sent
        assert add.delay(1, 1).get(timeout=10) == 2  # an unlimited task is not held
        outputs = one.output() + two.output()

    times = sorted(float(line.split()[1]) for line in path.read_text().splitlines())
    assert len(times) == TASKS  # each ran once
    assert times[-1] - times[0] >= (TASKS - 1) / RATE - TOLERANCE  # 3.8 s: one slot every 200 ms
    assert elapsed >= (TASKS - 1) / RATE - TOLERANCE
    assert most_starts_in_one_second(times) <= RATE, [round(b - a, 3) for a, b in zip(times, times[1:])]
    workers = set(TaskResult.objects.filter(task_id__in=[r.id for r in results]).values_list("worker", flat=True))
    assert {w.split("@")[0] for w in workers} == {"one", "two"}  # the limit held across both
    assert "could not reserve" not in outputs

    if broker.startswith("redis"):
        import redis

        assert redis.Redis.from_url(broker).exists(f"tasksq:ratelimit:{limited.name}")
        assert not RateLimitBucket.objects.exists()
    else:
        assert RateLimitBucket.objects.get(key=limited.name).next_slot_at >= times[-1]
