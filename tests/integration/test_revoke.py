"""Revokes that last: a revoked task never runs, however it waits and whichever workers restart.

Real ``manage.py taskworker`` processes; the tasks prove they did not run by
the file they would have written. The embedded broker runs every case, Redis
the first (the check does not depend on the broker: it runs on every message
a worker receives, and again before every start).
"""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import TaskRevokedError
from django_tasks_q.models import Revocation
from testproject.videos.tasks import add, mark, sleep
from tests.workers import WorkerProcess

from .test_spine import wait_until


def _use(settings, url):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    return url


@pytest.fixture(params=["django", "redis"])
def broker(request, settings, transactional_db):
    return _use(settings, "django://" if request.param == "django" else request.getfixturevalue("redis_url"))


@pytest.fixture
def django_broker(settings, transactional_db):
    return _use(settings, "django://")


def assert_dropped(worker: WorkerProcess, result, name: str) -> None:
    """The worker logged the drop, naming task and id, and the result reads REVOKED with TaskRevokedError."""
    worker.wait_for(f"task {name}[{result.id}] is revoked: dropped without running")
    assert result.state == TaskState.REVOKED
    assert isinstance(result.result, TaskRevokedError) and str(result.result) == "revoked"


def test_a_queued_task_revoked_before_any_worker_runs_never_runs(broker, tmp_path):
    """Also: revoke() marks the result at once, and the worker prunes expired revocation rows."""
    expired = Revocation.objects.create(task_id="long-gone", expires_at=timezone.now() - timedelta(seconds=5))
    target, after = tmp_path / "revoked", tmp_path / "after"
    revoked = mark.delay(str(target))
    revoked.revoke()
    assert revoked.state == TaskState.REVOKED  # no worker yet: marked by revoke() itself
    follower = mark.delay(str(after))  # queued behind it: once it ran, the revoked one was dealt with
    with WorkerProcess(broker, "-P", "solo") as worker:
        assert follower.get(timeout=20) == "ran"
        assert_dropped(worker, revoked, mark.name)
        assert "pruned 1 expired revocation(s)" in worker.output()
    assert not target.exists()
    assert not Revocation.objects.filter(pk=expired.pk).exists()
    assert Revocation.objects.filter(task_id=revoked.id).exists()  # live rows stay


def test_a_reserved_task_revoked_while_waiting_behind_a_busy_slot_never_runs(django_broker, tmp_path):
    target = tmp_path / "reserved"
    with WorkerProcess(django_broker, "-P", "threads", "-c", "1", "--prefetch-multiplier", "4") as worker:
        busy = sleep.delay(2.5)
        wait_until(lambda: busy.state == TaskState.STARTED, timeout=15)
        waiting = mark.delay(str(target))
        # prefetched behind the busy slot: the worker recorded its receipt
        wait_until(lambda: waiting.state == TaskState.RECEIVED, timeout=10)
        waiting.revoke()
        assert busy.get(timeout=20) == 2.5
        assert_dropped(worker, waiting, mark.name)
        assert add.delay(2, 2).get(timeout=20) == 4  # and the worker goes on
    assert not target.exists()


def test_a_countdown_task_revoked_while_held_stays_revoked_across_a_worker_restart(django_broker, tmp_path):
    """Held in memory by one worker (due within ETA_HOLD_MAX) or parked in the broker's delayed
    store (due later): revoked, the worker restarts before the time, the task never runs."""
    held_path, parked_path = tmp_path / "held", tmp_path / "parked"
    env = {"TASKS_Q_ETA_HOLD_MAX": "6"}
    with WorkerProcess(django_broker, "-P", "threads", "-c", "2", env=env) as worker:
        held = mark.apply_async((str(held_path),), countdown=5)  # due within ETA_HOLD_MAX: the first worker holds it
        parked = mark.apply_async((str(parked_path),), countdown=9)  # beyond ETA_HOLD_MAX: parked in the broker
        wait_until(lambda: held.state == TaskState.RECEIVED, timeout=10)  # held by this worker
        held.revoke()
        parked.revoke()
        worker.wait_for(f"revoke received for task {parked.id}")  # seen by the running worker too
    assert held.state == parked.state == TaskState.REVOKED
    with WorkerProcess(django_broker, "-P", "threads", "-c", "2", env=env) as worker:
        worker.wait_for(f"task {mark.name}[{held.id}] is revoked", timeout=15)
        worker.wait_for(f"task {mark.name}[{parked.id}] is revoked", timeout=15)
        assert add.delay(1, 1).get(timeout=20) == 2
    assert not held_path.exists() and not parked_path.exists()


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_taskcontrol_revoke_terminate_stops_a_running_task(django_broker, pool):
    """Prefork kills the child; solo is stopped by the watch thread while the task blocks the main thread."""
    with WorkerProcess(django_broker, "-P", pool, "-c", "1") as worker:
        long = sleep.delay(60)
        wait_until(lambda: long.state == TaskState.STARTED, timeout=15)
        started = time.monotonic()
        out = StringIO()
        call_command("taskcontrol", "revoke", long.id, "--terminate", "--signal", "SIGKILL", stdout=out)
        assert f"revoked {long.id} (terminate with SIGKILL)" in out.getvalue()
        worker.wait_for(f"terminated task {long.id} with SIGKILL", timeout=10)
        assert time.monotonic() - started < 10
        assert add.delay(20, 22).get(timeout=20) == 42  # the worker keeps serving, on a new child
        time.sleep(0.5)
        assert long.state == TaskState.REVOKED  # not rewritten as a lost child's FAILURE
        assert isinstance(long.result, TaskRevokedError)
