"""Run-time control commands without a broker: time-limit overrides, the main-loop hand-over, pool resizing.

Queue changes need a consuming connection: tests/integration/test_control_actions.py runs them on each broker.
"""

from __future__ import annotations

import threading
import time

import pytest

from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.worker.handoff import Handoff, Pending, Refused
from django_tasks_q.worker.limit_overrides import LimitOverrides
from django_tasks_q.worker.pools.base import Job
from django_tasks_q.worker.pools.threads import ThreadPool
from django_tasks_q.worker.remote_control import HANDLERS, RemoteControl
from django_tasks_q.worker.worker import Worker
from testproject.videos.tasks import naps, sleep


def call(control: RemoteControl, command: str, **arguments):
    return HANDLERS[command](control, **arguments)


def job(name: str, hard=None, soft=None) -> Job:
    return Job(message=TaskMessage(id="t-1", task=name, time_limit=hard, soft_time_limit=soft),
               delivery_info={"queue": "default"}, acks_late=False)


def limits(job_: Job) -> tuple:
    return job_.message.time_limit, job_.message.soft_time_limit


def test_time_limit_replaces_the_declared_limits_but_not_a_calls_own():
    overrides = LimitOverrides()
    assert limits(overrides.apply(job(naps.name, 30, 0.5))) == (30, 0.5)  # nothing set: as sent
    assert overrides.set(naps.name, soft="2", hard=20) == (20.0, 2.0)
    assert limits(overrides.apply(job(naps.name, 30, 0.5))) == (20.0, 2.0)  # naps' declared limits
    assert limits(overrides.apply(job(naps.name))) == (20.0, 2.0)  # a Celery client sends none
    assert limits(overrides.apply(job(naps.name, 30, 0.1))) == (30, 0.1)  # apply_async(soft_time_limit=0.1) wins
    waiting = overrides.apply(job(naps.name, 30, 0.5))
    overrides.set(naps.name, soft=3, hard=None)  # changed again while the job waits (rate limit): it follows
    assert limits(overrides.apply(waiting)) == (None, 3.0)
    assert overrides.set(sleep.name, soft=0, hard=0) == (None, None)  # 0 is no limit
    with pytest.raises(Refused, match="unknown task"):
        overrides.set("no.such.task", 1, 2)
    with pytest.raises(Refused, match="soft time limit must be a number of seconds, got 'fast'"):
        overrides.set(naps.name, "fast", 2)
    with pytest.raises(Refused, match="hard time limit must be a finite number"):
        overrides.set(naps.name, 1, -2)


def test_handoff_runs_calls_in_the_main_loop_and_says_when_it_did_not():
    handoff, replies = Handoff(), []
    asking = threading.Thread(target=lambda: replies.append(handoff.call(lambda: threading.current_thread().name,
                                                                         wait=10)))
    asking.start()
    while asking.is_alive():
        handoff.run_pending()  # what Worker._tick does
        time.sleep(0.01)
    assert replies == [threading.main_thread().name]

    def refuse():
        raise Refused("already consuming from videos")

    asking = threading.Thread(target=lambda: replies.append(pytest.raises(Refused, handoff.call, refuse, wait=10)))
    asking.start()
    while asking.is_alive():
        handoff.run_pending()
        time.sleep(0.01)
    assert str(replies[1].value) == "already consuming from videos"

    ran = []
    with pytest.raises(Pending):
        handoff.call(lambda: ran.append(1), wait=0.05)  # no main loop ran it in time...
    handoff.run_pending()
    assert ran == [1]  # ...but it stays queued and runs when the loop is free


@pytest.fixture
def threads_worker():
    worker = Worker(queues=["default"], pool="threads", concurrency=1, hostname="w@host", heartbeat=0,
                    prefetch_multiplier=4)
    worker.pool.start()
    yield worker
    worker.pool.stop()


def from_command_thread(worker: Worker, command: str, **arguments):
    """Run a handler in a thread, as the remote-control thread does, while this thread plays the main loop."""
    control, replies = RemoteControl(worker), []
    asking = threading.Thread(target=lambda: replies.append(HANDLERS[command](control, **arguments)))
    asking.start()
    while asking.is_alive():
        worker.handoff.run_pending()
        time.sleep(0.01)
    return replies[0]


def alive(pool: ThreadPool) -> int:
    return sum(thread.is_alive() for thread in pool._threads)


def test_threads_pool_grows_and_shrinks_with_the_prefetch_window(threads_worker):
    pool = threads_worker.pool
    assert from_command_thread(threads_worker, "pool_grow", n=2) == {"ok": "pool will grow to concurrency 3"}
    assert pool.concurrency == 3 and alive(pool) == 3 and threads_worker.prefetch == 12
    assert call(RemoteControl(threads_worker), "stats")["pool"]["max-concurrency"] == 3
    assert from_command_thread(threads_worker, "pool_shrink", n="2") == {"ok": "pool will shrink to concurrency 1"}
    assert pool.concurrency == 1 and threads_worker.prefetch == 4
    deadline = time.monotonic() + 5
    while alive(pool) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alive(pool) == 1  # two idle threads took their stop marker
    refused = from_command_thread(threads_worker, "pool_shrink")
    assert refused == {"error": "cannot shrink the threads pool by 1: it has 1 thread(s) and keeps at least one"}
    assert from_command_thread(threads_worker, "pool_grow", n=0) == {
        "error": "pool_grow needs a positive number of slots, got 0"}
    assert "whole number" in from_command_thread(threads_worker, "pool_grow", n="many")["error"]


def test_commands_refused_before_reaching_the_main_loop(threads_worker):
    control = RemoteControl(threads_worker)
    assert call(control, "add_consumer", queue="default") == {"error": "already consuming from default"}
    assert call(control, "cancel_consumer", queue="videos") == {"error": "not consuming from videos"}
    assert call(control, "add_consumer", queue=" ") == {"error": "add_consumer needs a queue name"}
    assert call(control, "time_limit", task_name="no.such.task", soft=1) == {"error": "unknown task"}
    assert call(control, "time_limit", task_name=naps.name, soft=1.5) == {"ok": "time limits set successfully"}
    assert threads_worker.time_limits.get(naps.name) == (None, 1.5)  # no hard limit given: none, as in Celery
    solo = RemoteControl(Worker(queues=["default"], pool="solo", hostname="s@host", heartbeat=0))
    assert "the solo pool runs one task at a time" in call(solo, "pool_grow", n=1)["error"]
    assert "the solo pool runs one task at a time" in call(solo, "pool_shrink")["error"]


def test_pool_grow_is_capped(threads_worker, settings):
    """A broadcast must not fork a host to death: past MAX_CONCURRENCY (default 4 x the start) is refused."""
    control = RemoteControl(threads_worker)  # started with concurrency 1: the default cap is 4
    refused = call(control, "pool_grow", n=4)
    assert refused == {"error": "pool_grow 4 refused: concurrency 1 + 4 is past the cap of 4 "
                                "(TASKS_Q['MAX_CONCURRENCY'])"}
    assert call(control, "pool_grow", n=10**9)["error"].startswith("pool_grow 1000000000 refused")
    assert threads_worker.pool.concurrency == 1
    settings.TASKS_Q = {**settings.TASKS_Q, "MAX_CONCURRENCY": 2}
    assert "past the cap of 2" in call(control, "pool_grow", n=2)["error"]
