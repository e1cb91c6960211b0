"""Groups and chords with real ``manage.py taskworker`` processes (seed 003's examples).

The seed examples and failure paths run on the embedded broker, Redis and
RabbitMQ. The chord counter's exactly-once behaviour under load (1,000
members; members finishing at the same moment on two workers) runs on Redis.
"""

from __future__ import annotations

import pytest

from django_tasks_q import AsyncResult, GroupResult, chain, chord, group
from django_tasks_q.exceptions import ChordError
from django_tasks_q.models import ChordCounter, TaskResult
from testproject.videos.tasks import add, echo, fail, log, mark, sleep, tally
from tests.workers import WorkerProcess

SEED_SUMS = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_seed_group_and_chord(worker, use_broker):
    """003: ``group(add.s(i, i) for i in range(10))`` and ``chord(group(...), log.s())``."""
    result = group(add.s(i, i) for i in range(10)).delay()
    assert result.get(timeout=20) == SEED_SUMS
    assert len(result.results) == 10 and all(isinstance(r, AsyncResult) for r in result.results)
    assert result.ready() and result.successful() and result.completed_count() == 10
    rows = dict(TaskResult.objects.filter(group_id=result.id).values_list("task_id", "result"))
    assert [rows[r.id] for r in result.results] == SEED_SUMS
    result.save()
    assert GroupResult.restore(result.id).get(timeout=1) == SEED_SUMS

    result = chord(group(add.s(i, i) for i in range(10)), log.s()).delay()
    # the seed printed the header out of order ("... 12, 16, 14, 18"); here the order is the group's
    assert result.get(timeout=20) == "LOG: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]"
    assert result.status == "SUCCESS"
    assert TaskResult.objects.filter(task_name="testproject.videos.tasks.log", task_id=result.id).count() == 1


def test_failures_in_group_and_chord(worker, use_broker, tmp_path):
    result = group([add.s(1, 1), fail.s("member broke"), add.s(2, 2)]).delay()
    with pytest.raises(ValueError, match="member broke"):
        result.get(timeout=20)
    values = result.get(timeout=20, propagate=False)
    assert values[0] == 2 and values[2] == 4 and isinstance(values[1], ValueError)
    assert result.failed() and not result.successful() and result.completed_count() == 2

    flag, ran = tmp_path / "errback", tmp_path / "body"
    members = [add.s(1, 1), fail.s("chord member broke"), add.s(2, 2)]
    body = tally.s(str(ran)).on_error(mark.si(str(flag), "errback ran"))
    result = chord(members, body).delay()
    failing = result.parent.results[1]
    with pytest.raises(ChordError) as raised:
        result.get(timeout=20)
    assert str(raised.value) == (f"chord member testproject.videos.tasks.fail[{failing.id}] failed: "
                                 "ValueError: chord member broke")
    assert result.state == "FAILURE"
    assert _eventually(lambda: flag.exists() and flag.read_text().startswith("errback ran"))
    assert not ran.exists()  # the body never ran


def test_chord_inside_chain_and_chain_inside_group(worker, use_broker):
    result = chain(add.s(1, 1), chord([add.s(1), add.s(2) | add.s(10)], log.s()), echo.s("after")).delay()
    assert result.get(timeout=20) == {"args": ["LOG: [3, 14]", "after"], "kwargs": {}}
    assert result.parent.get(timeout=1) == "LOG: [3, 14]"
    assert group([add.s(1, 1) | add.s(10), add.s(2, 2)]).delay().get(timeout=20) == [12, 4]


@pytest.fixture(scope="module")
def redis_workers(redis_url, django_db_blocker):
    """Two threads-pool workers on Redis, four threads each, prefetching no more than they run."""
    env = {"TASKS_Q_PREFETCH_MULTIPLIER": "1"}
    with WorkerProcess(redis_url, "-P", "threads", "-c", "4", "-n", "chords-a@%h", env=env) as a, \
            WorkerProcess(redis_url, "-P", "threads", "-c", "4", "-n", "chords-b@%h", env=env) as b:
        yield a, b


@pytest.fixture
def on_redis(settings, redis_url, transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": redis_url}


def test_thousand_member_chord_fires_once(redis_workers, on_redis, tmp_path):
    ran = tmp_path / "body"
    result = chord((add.s(i, 0) for i in range(1000)), tally.s(str(ran))).delay()
    assert result.get(timeout=120) == sum(range(1000))
    assert ran.read_text().splitlines() == [f"1000 {sum(range(1000))}"]
    assert not ChordCounter.objects.exists()
    served = set(TaskResult.objects.filter(group_id=result.parent.id).values_list("worker", flat=True))
    assert {w.split("@")[0] for w in served} == {"chords-a", "chords-b"}  # both workers counted members


def test_members_finishing_together_on_two_workers_fire_once(redis_workers, on_redis, tmp_path):
    ran = tmp_path / "body"
    # eight members sleeping the same time on 2 x 4 threads: they finish within milliseconds of each other
    result = chord([sleep.s(0.5) for _ in range(8)], tally.s(str(ran))).delay()
    assert result.get(timeout=30) == 4.0
    assert _eventually(lambda: ran.exists() and ran.read_text().endswith("\n"))
    assert ran.read_text().splitlines() == ["8 4.0"]
    served = set(TaskResult.objects.filter(group_id=result.parent.id).values_list("worker", flat=True))
    assert len(served) == 2


def _eventually(predicate, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
