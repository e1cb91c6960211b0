"""``worker.revocations``: storing revokes, and the worker's watch over them (no worker process here;
tests/integration/test_revoke.py runs real workers)."""

from __future__ import annotations

import signal
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_tasks_q import AsyncResult
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import TaskRevokedError
from django_tasks_q.models import Revocation, TaskResult
from django_tasks_q.results.backend import get_backend
from django_tasks_q.worker.revocations import RevocationWatch, parse_signal, revoke


@pytest.mark.parametrize("given", ["SIGKILL", "KILL", "sigkill", 9, "9"])
def test_parse_signal_accepts_names_and_numbers(given):
    assert parse_signal(given) == signal.SIGKILL


def test_parse_signal_names_the_bad_value():
    with pytest.raises(ValueError, match="unknown signal 'SIGNOPE'.*SIGTERM"):
        parse_signal("SIGNOPE")


def test_revoke_stores_a_row_and_marks_an_unfinished_result(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "REVOKE_EXPIRES": 600}
    get_backend().mark("done-1", TaskState.SUCCESS, result=5, task_name="videos.tasks.add")
    get_backend().mark("running-1", TaskState.STARTED, task_name="videos.tasks.sleep")
    before = timezone.now()
    revoke(["queued-1", "running-1", "done-1"], reason="changed my mind")
    rows = {r.task_id: r for r in Revocation.objects.all()}
    assert set(rows) == {"queued-1", "running-1", "done-1"}
    row = rows["queued-1"]
    assert not row.terminate and row.signal == "SIGTERM" and row.reason == "changed my mind"
    assert timedelta(seconds=599) < row.expires_at - before < timedelta(seconds=601)
    queued, running = AsyncResult("queued-1"), AsyncResult("running-1")
    assert queued.state == running.state == TaskState.REVOKED
    assert isinstance(queued.result, TaskRevokedError) and str(queued.result) == "revoked"
    assert TaskResult.objects.get(task_id="running-1").task_name == "videos.tasks.sleep"  # kept
    assert AsyncResult("done-1").state == TaskState.SUCCESS  # a finished result is not rewritten
    assert AsyncResult("done-1").get() == 5


def test_async_result_revoke_with_terminate_refreshes_an_earlier_revoke():
    result = AsyncResult("again-1")
    result.revoke()
    first = Revocation.objects.get(task_id="again-1")
    result.revoke(terminate=True, signal="KILL")
    second = Revocation.objects.get(task_id="again-1")
    assert second.terminate and second.signal == "SIGKILL"
    assert second.created_at > first.created_at  # so watching workers see it as new
    with pytest.raises(ValueError, match="unknown signal"):
        result.revoke(terminate=True, signal="SIGBOGUS")


def test_revoke_in_eager_mode_is_stored(eager):
    from testproject.videos.tasks import add

    result = add.delay(1, 2)
    assert result.get() == 3
    result.revoke()
    assert Revocation.objects.filter(task_id=result.id).exists()


def test_taskcontrol_revoke_command():
    out = StringIO()
    call_command("taskcontrol", "revoke", "cmd-1", "cmd-2", "--terminate", "--signal", "SIGKILL", stdout=out)
    assert "revoked cmd-1 (terminate with SIGKILL)" in out.getvalue()
    assert set(Revocation.objects.filter(terminate=True, signal="SIGKILL").values_list("task_id", flat=True)) \
        == {"cmd-1", "cmd-2"}
    assert AsyncResult("cmd-2").state == TaskState.REVOKED
    with pytest.raises(CommandError, match="unknown signal 'NOPE'"):
        call_command("taskcontrol", "revoke", "cmd-3", "--terminate", "--signal", "NOPE")
    assert not Revocation.objects.filter(task_id="cmd-3").exists()


class RecordingPool:
    """Stands in for a pool whose task ``running`` is running (pools test terminate for real)."""

    def __init__(self, running=()):
        self.running = set(running)
        self.calls = []

    def terminate(self, task_id, signum):
        self.calls.append((task_id, signum))
        return task_id in self.running


def test_watch_loads_polls_terminates_and_prunes():
    now = timezone.now()
    Revocation.objects.create(task_id="old-live", terminate=True, expires_at=now + timedelta(hours=1))
    Revocation.objects.create(task_id="old-expired", expires_at=now - timedelta(seconds=1))
    pool = RecordingPool(running={"runs-now"})
    watch = RevocationWatch(pool, "w1@host")
    watch.poll()  # what start() does before the first message
    assert watch.is_revoked("old-live") and not watch.is_revoked("old-expired")
    assert not Revocation.objects.filter(task_id="old-expired").exists()  # pruned
    assert pool.calls == []  # nothing runs yet at start: no terminate for old rows

    revoke(["runs-now"], terminate=True, signal="SIGKILL")
    revoke(["queued-elsewhere"])
    watch.poll()
    assert watch.is_revoked("runs-now") and watch.is_revoked("queued-elsewhere")
    assert pool.calls == [("runs-now", signal.SIGKILL)]
    watch.poll()  # the overlap re-reads recent rows: they are not new, nothing is terminated twice
    assert pool.calls == [("runs-now", signal.SIGKILL)]
    assert not watch.is_revoked("never-revoked")

    Revocation.objects.filter(task_id="queued-elsewhere").delete()
    watch._next_resync = 0  # a full reload forgets rows that are gone
    watch.poll()
    assert not watch.is_revoked("queued-elsewhere") and watch.is_revoked("runs-now")


def test_check_started_terminates_a_task_revoked_just_before_it_started():
    pool = RecordingPool(running={"raced"})
    watch = RevocationWatch(pool)
    watch.poll()
    revoke(["raced"], terminate=True)
    revoke(["plain"])
    watch.poll()
    pool.calls.clear()
    watch.check_started("raced")
    watch.check_started("plain")  # revoked without terminate: a started task runs on
    watch.check_started("other")
    assert pool.calls == [("raced", signal.SIGTERM)]


def test_watch_thread_starts_and_stops():
    watch = RevocationWatch(RecordingPool())
    watch.interval = 0.01
    watch.start()
    try:
        assert watch._thread.is_alive()
    finally:
        watch.stop()
    assert not watch._thread.is_alive()


def test_the_worker_drops_a_revoked_job_and_sends_task_revoked():
    from django_tasks_q import signals
    from django_tasks_q.core.protocol import TaskMessage
    from django_tasks_q.worker.pools.base import Job
    from django_tasks_q.worker.worker import Worker
    from testproject.videos.tasks import add

    worker = Worker(pool="solo", hostname="w@host")
    revoke(["gone-1"])
    worker.revocations.poll()
    received = []

    def receiver(sender, **kwargs):
        received.append((sender, kwargs))

    signals.task_revoked.connect(receiver)
    try:
        dropped = Job(message=TaskMessage(id="gone-1", task=add.name), delivery_info={"queue": "default"},
                      acks_late=False)
        kept = Job(message=TaskMessage(id="fine-1", task=add.name), delivery_info={"queue": "default"},
                   acks_late=False)
        assert worker._revoked(dropped) is True
        assert worker._revoked(kept) is False
    finally:
        signals.task_revoked.disconnect(receiver)
    [(sender, kwargs)] = received
    assert sender is add and kwargs["request"].id == "gone-1" and kwargs["request"].hostname == "w@host"
    assert kwargs["terminated"] is False and kwargs["expired"] is False
    row = TaskResult.objects.get(task_id="gone-1")
    assert row.state == TaskState.REVOKED and row.worker == "w@host" and row.task_name == add.name
