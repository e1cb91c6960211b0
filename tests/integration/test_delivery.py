"""What each broker gives back when a worker is SIGKILLed: the delivery guarantees of docs/reliability.md.

A task is acked when it starts (the default) or when it finishes
(``acks_late``). Whatever was received but not acked -- prefetched tasks
waiting for a slot, held eta tasks, an ``acks_late`` task mid-run -- goes
back to the queue when its worker dies, on every broker. A task acked at
its start and killed mid-run is not run again: that is what acking early
means, and its result stays STARTED.
"""

from __future__ import annotations

import time

import pytest

from django_tasks_q.core.states import TaskState
from django_tasks_q.worker.pools.prefork import WorkerLostError
from testproject.videos.tasks import add, kill_own_child, mark, sleep
from tests.workers import WorkerProcess

from .test_spine import wait_until

QUICK = {"TASKS_Q_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 1, "unacked_restore_throttle": 1}'}


@pytest.fixture(params=["django", "redis", "amqp"])
def url(request, broker, transactional_db):
    url = "django://" if request.param == "django" else request.getfixturevalue(f"{request.param}_url")
    broker(url)
    return url


def test_prefetched_and_held_tasks_come_back_after_sigkill(url, tmp_path):
    path = tmp_path / "runs"
    doomed = WorkerProcess(url, "-P", "solo", "-Q", "kill", "-n", "doomed@%h", "--prefetch-multiplier", "4",
                           env=QUICK).start()
    try:
        running = sleep.apply_async((30,), queue="kill")
        wait_until(lambda: running.state == TaskState.STARTED, timeout=15)
        waiting = [mark.apply_async((str(path), f"waiting-{n}"), queue="kill") for n in range(3)]
        held = mark.apply_async((str(path), "held"), queue="kill", countdown=6)  # within ETA_HOLD_MAX: held
        time.sleep(1.5)  # they reach the worker's prefetch window
    finally:
        doomed.kill()
    assert not path.exists()
    with WorkerProcess(url, "-P", "solo", "-Q", "kill", "-n", "rescuer@%h", env=QUICK):
        assert sorted(r.get(timeout=30) for r in waiting) == ["waiting-0", "waiting-1", "waiting-2"]
        assert held.get(timeout=30) == "held"
        time.sleep(1)
    notes = sorted(line.split()[0] for line in path.read_text().splitlines())
    assert notes == ["held", "waiting-0", "waiting-1", "waiting-2"], "each ran exactly once"
    assert running.state == TaskState.STARTED  # acked at start: not run again


def test_acks_late_task_that_kills_its_child_is_given_back_once_then_fails(url, tmp_path):
    path = tmp_path / "runs"
    with WorkerProcess(url, "-P", "prefork", "-c", "1", "-Q", "kill", "-n", "fragile@%h", env=QUICK):
        result = kill_own_child.apply_async((str(path),), queue="kill")
        with pytest.raises(WorkerLostError, match="exited"):
            result.get(timeout=30)
        assert mark.apply_async((str(tmp_path / "after"), "next"), queue="kill").get(timeout=20) == "next"
    assert path.read_text().splitlines() == ["ran", "ran"], "given back once, then failed"


def test_a_held_eta_task_does_not_use_up_the_prefetch_window(url):
    """A window of one message (solo, multiplier 1): the eta task the worker holds widens it, so a task sent
    after it starts at once -- on RabbitMQ too, where a window set per consumer would not reach the consumer
    already running (the worker sets the channel's)."""
    with WorkerProcess(url, "-P", "solo", "-Q", "window", "-n", "window@%h", "--prefetch-multiplier", "1"):
        later = add.apply_async((1, 1), queue="window", countdown=8)
        wait_until(lambda: later.state == TaskState.RECEIVED, timeout=10)  # held in the worker
        started = time.monotonic()
        assert add.apply_async((2, 2), queue="window").get(timeout=5) == 4
        assert time.monotonic() - started < 4 and later.state == TaskState.RECEIVED
        assert later.get(timeout=20) == 2
