"""Time limits and ``Pool.terminate`` against real workers, pools and databases.

* Hard and soft limits on a real ``taskworker`` (prefork, solo, threads).
* ``terminate()`` on each pool built in this process (a revoke command cannot
  steer a worker subprocess here), called from another thread as the
  revocation watcher does; the database is the real test database, which
  prefork children write to.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest

from django_tasks_q import signals
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django_tasks_q.models import TaskResult
from django_tasks_q.worker import timelimits
from django_tasks_q.worker.pools import create_pool
from django_tasks_q.worker.pools.base import Job
from django_tasks_q.worker.supervisor import Supervisor
from testproject.videos.tasks import add, naps, sleep, sleep_late
from tests.workers import WorkerProcess

from .broker_tools import queue_size
from .test_spine import wait_until


@pytest.fixture(params=["django", "redis", "amqp"])
def broker(request, settings, transactional_db):
    url = "django://" if request.param == "django" else request.getfixturevalue(f"{request.param}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    return url


def test_prefork_hard_limit_kills_the_child_and_the_worker_goes_on(broker):
    with WorkerProcess(broker, "-P", "prefork", "-c", "2", "-Q", "limits") as worker:
        neighbour = sleep.apply_async((2.0,), queue="limits")  # on the other child: must not be disturbed
        doomed = sleep_late.apply_async((30,), queue="limits", time_limit=1)  # acks_late, per-call hard limit
        with pytest.raises(TimeLimitExceeded, match=r"hard time limit \(1s\)"):
            doomed.get(timeout=20)
        assert doomed.state == TaskState.FAILURE
        assert neighbour.get(timeout=20) == 2.0
        # the replacement child serves; soft limits work in children (task option, then per call)
        assert add.apply_async((2, 3), queue="limits").get(timeout=20) == 5
        caught = naps.apply_async((20,), queue="limits").get(timeout=20)  # soft_time_limit=0.5 declared
        assert caught["soft_limit"] == "soft time limit (0.5s) exceeded" and caught["after"] < 5
        uncaught = sleep.apply_async((20,), queue="limits", soft_time_limit=0.3)
        with pytest.raises(SoftTimeLimitExceeded):
            uncaught.get(timeout=20)
        output = worker.output()
        assert "hard time limit (1s) exceeded" in output
        assert "exited (exitcode" not in output  # a limit is not reported as a lost child
        if broker.startswith("amqp"):  # RabbitMQ gives the unacked message back as the child dies: dropped
            worker.wait_for(f"{doomed.id}] came back from the broker but already ended FAILURE", timeout=10)
    # stopped: an unacked message would be back on the queue now; the timed-out one was acked
    assert queue_size(broker, "limits") == 0
    assert TaskResult.objects.get(task_id=doomed.id).state == TaskState.FAILURE


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_soft_limit_on_solo_and_threads_and_the_unenforced_hard_limit(pool, settings, transactional_db):
    url = "django://"
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    with WorkerProcess(url, "-P", pool, "-c", "2", "-Q", "limits") as worker:
        # naps declares soft_time_limit=0.5 and time_limit=30; on threads it must nap in chunks to be reached
        chunk = None if pool == "solo" else 0.05
        first = naps.apply_async((20,), {"chunk": chunk}, queue="limits").get(timeout=20)
        assert first["soft_limit"] == "soft time limit (0.5s) exceeded" and first["after"] < 5
        override = naps.apply_async((20,), {"chunk": chunk}, queue="limits", soft_time_limit=0.2).get(timeout=20)
        assert override["soft_limit"] == "soft time limit (0.2s) exceeded"
        assert naps.apply_async((0.1,), queue="limits").get(timeout=20) == {"slept": 0.1}
        warnings = [line for line in worker.output().splitlines() if "cannot enforce" in line]
        assert len(warnings) == 1 and "naps" in warnings[0] and f"the {pool} pool" in warnings[0]


# -- Pool.terminate, in this process -----------------------------------------

def _job(task, *args, acks_late=False, **kwargs) -> Job:
    message = TaskMessage(id=str(uuid.uuid4()), task=task.name, args=args, kwargs=kwargs)
    return Job(message=message, delivery_info={"queue": "default"}, acks_late=acks_late)


def _collect(pool, timeout: float = 20) -> list:
    deadline = time.monotonic() + timeout
    finished = []
    while pool.in_flight() and time.monotonic() < deadline:
        finished.extend(pool.poll(0.05))
    assert not pool.in_flight(), "the pool did not finish its jobs"
    return finished


@pytest.fixture
def revoked_signals():
    seen = []

    def receiver(sender, **kwargs):
        seen.append(kwargs)

    signals.task_revoked.connect(receiver, weak=False)
    yield seen
    signals.task_revoked.disconnect(receiver)


def _assert_revoked(job: Job) -> None:
    row = TaskResult.objects.get(task_id=job.message.id)
    assert row.state == TaskState.REVOKED
    assert row.result == {"exc_type": "TaskRevokedError", "exc_message": ["terminated"],
                          "exc_module": "django_tasks_q.exceptions"}


def test_prefork_terminate_kills_the_child_and_records_revoked(broker, revoked_signals):
    """The parent of consuming children, in this process: its children take tasks from the broker."""
    supervisor = Supervisor(pool="prefork", concurrency=2, queues=["terminate"], hostname="terminate@test",
                            heartbeat=0)
    pool = supervisor.pool
    pool.start()
    try:
        before = set(pool.pids())
        running = sleep_late.apply_async((30,), queue="terminate")  # acks_late: must not come back and run
        other = sleep.apply_async((1.0,), queue="terminate")
        wait_until(lambda: TaskResult.objects.filter(task_id=running.id, state="STARTED").exists(), 15)
        assert pool.terminate("not-running-here") is False
        assert _terminate_from_another_thread(pool, running.id) is True
        row = TaskResult.objects.get(task_id=running.id)
        assert row.state == TaskState.REVOKED  # recorded before the kill
        assert row.result == {"exc_type": "TaskRevokedError", "exc_message": ["terminated"],
                              "exc_module": "django_tasks_q.exceptions"}
        (sent,) = revoked_signals
        assert sent["terminated"] is True and sent["signum"] == signal.SIGTERM
        # the killed child is replaced; the other child was left alone and the pool keeps serving
        wait_until(lambda: pool.supervise(0.05) or len(set(pool.pids()) - before) == 1, 15)
        assert len(pool.pids()) == 2
        assert other.get(timeout=20) == 1.0
        assert add.apply_async((1, 2), queue="terminate").get(timeout=20) == 3
        assert pool.terminate(running.id) is False  # no longer running here
        # the message the broker gave back (on Redis, once its visibility lapses) is acked, never run again
        time.sleep(0.5)
        pool.supervise(0.05)
        assert TaskResult.objects.get(task_id=running.id).state == TaskState.REVOKED
    finally:
        pool.stop(wait=False)
    assert pool.pids() == []


def _terminate_from_another_thread(pool, task_id: str) -> bool:
    """``pool.terminate`` as the revocation watch calls it: from a thread of its own."""
    answers: list[bool] = []
    stopper = threading.Thread(target=lambda: answers.append(pool.terminate(task_id)))
    stopper.start()
    stopper.join()
    return answers[0]


def test_threads_terminate_raises_in_the_task_thread(transactional_db, revoked_signals):
    pool = create_pool("threads", 2, "terminate@test")
    pool.start()
    try:
        running = _job(naps, 30, chunk=0.02)
        other = _job(sleep, 0.5)
        pool.apply(running)
        pool.apply(other)
        assert pool.terminate("not-here") is False
        wait_until(lambda: timelimits.running(running.message.id), 15)
        assert _terminate_from_another_thread(pool, running.message.id) is True
        outcomes = {job.message.id: outcome for job, outcome in _collect(pool)}
        assert outcomes[running.message.id].state == TaskState.REVOKED
        assert outcomes[other.message.id].state == TaskState.SUCCESS
        _assert_revoked(running)
        assert [s["signum"] for s in revoked_signals] == [signal.SIGTERM]
        assert pool.terminate(running.message.id) is False
        assert pool.free_slots() == 2  # both threads serve on
    finally:
        pool.stop()


def test_solo_terminate_interrupts_the_main_thread(transactional_db, revoked_signals):
    assert threading.current_thread() is threading.main_thread()  # as in the worker: solo runs tasks here
    pool = create_pool("solo", 1, "terminate@test")
    pool.start()
    running = _job(naps, 30)  # one blocking sleep(30): a signal interrupts it
    answers = []

    def stop():
        wait_until(lambda: timelimits.running(running.message.id), 15)
        answers.append(pool.terminate(running.message.id, signal.SIGKILL))

    stopper = threading.Thread(target=stop)
    stopper.start()
    started = time.monotonic()
    pool.apply(running)  # returns once the task is stopped
    stopper.join()
    assert answers == [True]
    assert time.monotonic() - started < 25  # interrupted, not slept out
    ((job, outcome),) = pool.poll()
    assert job is running and outcome.state == TaskState.REVOKED
    _assert_revoked(running)
    assert [s["signum"] for s in revoked_signals] == [signal.SIGKILL]
    assert pool.terminate(running.message.id) is False
    pool.apply(_job(add, 2, 2))
    assert [o.state for _j, o in pool.poll()] == [TaskState.SUCCESS]
