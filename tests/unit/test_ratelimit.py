"""``worker.ratelimit``: the GCRA slot math, the ORM store's compare-and-set, the worker's hold.

The clock is the only fake: slots are computed from it, so tests set it.
The store is the real ``RateLimitBucket`` table.
"""

from __future__ import annotations

import pytest

from django_tasks_q import task
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.models import RateLimitBucket
from django_tasks_q.worker.pools.base import Job
from django_tasks_q.worker.ratelimit import OrmStore, RateLimiter, StoreContention, gcra


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- gcra ----------------------------------------------------------------

def test_gcra_spaces_slots_one_interval_apart_and_banks_nothing_while_idle():
    next_slot = 0.0
    slots = []
    for _ in range(3):  # three asks at the same instant
        slot, next_slot = gcra(next_slot, 100.0, 0.25)
        slots.append(slot)
    assert slots == [100.0, 100.25, 100.5]
    assert next_slot == 100.75
    # asked later than the next free slot: the slot is "now", no burst for the idle time
    assert gcra(next_slot, 200.0, 0.25) == (200.0, 200.25)
    # asked before it: wait for it
    assert gcra(next_slot, 100.6, 0.25) == (100.75, 101.0)


# -- the ORM store ---------------------------------------------------------

def test_orm_store_reserves_successive_slots_in_one_row():
    clock = Clock(1000.0)
    store = OrmStore(clock=clock)
    assert store.reserve("videos.encode", 0.5) == 0.0  # creates the row
    assert store.reserve("videos.encode", 0.5) == pytest.approx(0.5)
    assert store.reserve("videos.encode", 0.5) == pytest.approx(1.0)
    assert RateLimitBucket.objects.get(key="videos.encode").next_slot_at == pytest.approx(1001.5)
    assert store.reserve("other.task", 0.5) == 0.0  # one row per task name
    clock.now = 1010.0
    assert store.reserve("videos.encode", 0.5) == 0.0
    assert RateLimitBucket.objects.get(key="videos.encode").next_slot_at == pytest.approx(1010.5)


class RacedStore(OrmStore):
    """Between its read and its compare-and-set, another worker reserves a slot (for real, in the table)."""

    def __init__(self, clock, races: int):
        super().__init__(clock=clock)
        self.rival = OrmStore(clock=clock)
        self.races = races
        self.reads = 0

    def _read(self, key):
        value = super()._read(key)
        self.reads += 1
        if value is not None and self.races > 0:
            self.races -= 1
            self.rival.reserve(key, 0.5)  # moves the row on after we read it
        return value


def test_orm_store_compare_and_set_loses_a_race_and_reads_again():
    clock = Clock(1000.0)
    OrmStore(clock=clock).reserve("k", 0.5)  # row exists, next free slot 1000.5
    store = RacedStore(clock, races=1)
    wait = store.reserve("k", 0.5)
    # the rival took 1000.5; our first CAS (on the stale 1000.5) failed, the second got 1001.0
    assert wait == pytest.approx(1.0)
    assert store.reads == 2
    assert RateLimitBucket.objects.get(key="k").next_slot_at == pytest.approx(1001.5)


def test_orm_store_gives_up_with_a_clear_error_after_too_many_lost_races():
    clock = Clock(1000.0)
    OrmStore(clock=clock).reserve("k", 0.5)
    store = RacedStore(clock, races=10)
    store.attempts = 3
    with pytest.raises(StoreContention, match="'k'.*3 compare-and-set races"):
        store.reserve("k", 0.5)


# -- the worker's hold -------------------------------------------------------

class ListStore:
    """Hands out the waits it is given (the ORM store is tested above)."""

    def __init__(self, waits):
        self.waits = list(waits)
        self.asked = []

    def reserve(self, key, interval):
        self.asked.append((key, interval))
        wait = self.waits.pop(0)
        if isinstance(wait, Exception):
            raise wait
        return wait


def job(name: str, task_id: str) -> Job:
    return Job(message=TaskMessage(id=task_id, task=name), delivery_info={"queue": "default"}, acks_late=False)


@pytest.fixture
def limited(clean_registry):
    @task(name="tests.limited", rate_limit="4/s")
    def limited():
        return None

    @task(name="tests.unlimited")
    def unlimited():
        return None

    @task(name="tests.zero", rate_limit="0/s")
    def zero():
        return None


def test_intervals_come_from_the_task_option(limited):
    limiter = RateLimiter(store_factory=lambda: ListStore([]))
    assert limiter.interval("tests.limited") == 0.25
    assert limiter.interval("tests.unlimited") is None
    assert limiter.interval("tests.zero") is None  # "0/s" means no limit, as in Celery
    assert limiter.interval("not.registered") is None


def test_hold_releases_a_job_at_its_slot_and_does_not_reserve_again(limited):
    clock = Clock(1000.0)
    store = ListStore([0.0, 0.25, 0.5])
    limiter = RateLimiter(store_factory=lambda: store, clock=clock)
    first, second, third, free = (job("tests.limited", "a"), job("tests.limited", "b"),
                                  job("tests.limited", "c"), job("tests.unlimited", "d"))
    assert limiter.hold(first) is False  # its slot is now
    assert limiter.hold(second) is True and limiter.hold(third) is True
    assert limiter.hold(free) is False
    assert store.asked == [("tests.limited", 0.25)] * 3  # the unlimited task never asked
    assert limiter.next_due() == 1000.25
    assert limiter.cap_timeout(1.0) == pytest.approx(0.25)
    assert limiter.due() == []
    clock.now = 1000.3
    assert limiter.due() == [second]
    assert limiter.hold(second) is False  # its slot came: it starts, no second reservation
    assert len(store.asked) == 3
    clock.now = 1000.6
    assert limiter.due() == [third]
    assert limiter.cap_timeout(1.0) == 1.0  # nothing held


def test_a_store_failure_holds_the_job_and_tries_again(limited):
    clock = Clock(1000.0)
    store = ListStore([ConnectionError("db down"), 0.0])
    limiter = RateLimiter(store_factory=lambda: store, clock=clock)
    waiting = job("tests.limited", "x")
    assert limiter.hold(waiting) is True  # never started without a slot
    clock.now += limiter.retry_after_error
    assert limiter.due() == [waiting]
    assert limiter.hold(waiting) is False  # reserved this time (wait 0)
    assert len(store.asked) == 2


def test_take_all_empties_the_hold(limited):
    limiter = RateLimiter(store_factory=lambda: ListStore([0.5, 0.75]), clock=Clock())
    jobs = [job("tests.limited", "p"), job("tests.limited", "q")]
    assert all(limiter.hold(j) for j in jobs)
    assert limiter.take_all() == jobs
    assert len(limiter) == 0 and limiter.next_due() is None


def test_the_worker_holds_a_rate_limited_job_unacked_and_records_it_received():
    from django_tasks_q.models import TaskResult
    from django_tasks_q.worker.worker import Worker
    from testproject.videos.tasks import limited

    worker = Worker(pool="threads", concurrency=1, hostname="w@host")
    worker.rate_limits = RateLimiter(store_factory=lambda: ListStore([5.0]))
    waiting = job(limited.name, "rl-1")
    worker._start(waiting)
    assert worker.pool.in_flight() == 0  # not started: held for its slot
    assert len(worker.rate_limits) == 1
    assert TaskResult.objects.get(task_id="rl-1").state == "RECEIVED"
