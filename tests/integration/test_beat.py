"""End to end: ``manage.py taskbeat`` and ``manage.py taskworker`` subprocesses
on the embedded broker run periodic tasks; edits and disabling take effect
without restarts; two beats never send a slot twice."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import pytest

from django_tasks_q.models import BeatLease, CrontabSchedule, IntervalSchedule, PeriodicTask, TaskResult
from tests.workers import ROOT, WorkerProcess, worker_env

from .test_spine import wait_until

ECHO = "testproject.videos.tasks.echo"


class BeatProcess(WorkerProcess):
    """``manage.py taskbeat`` in a subprocess (same harness as workers)."""

    def __init__(self, broker_url: str, *args: str, env: dict | None = None):
        super().__init__(broker_url, *args, env=env)
        self.args = [sys.executable, str(ROOT / "manage.py"), "taskbeat", *args]

    def start(self, timeout: float = 30) -> "BeatProcess":
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for("beat started", timeout)
        return self


@pytest.fixture
def embedded(settings, transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "django://"}
    return "django://"


def every(seconds: int) -> IntervalSchedule:
    return IntervalSchedule.objects.get_or_create(every=seconds, period="seconds")[0]


def runs(tag: str) -> list:
    return list(TaskResult.objects.filter(task_name=ECHO, args=[tag], state="SUCCESS")
                .order_by("date_started").values_list("date_started", flat=True))


def test_beat_runs_every_second_and_picks_up_edits_without_restart(embedded, admin_client):
    from django.urls import reverse

    from .test_admin_schedules import form_data

    task = PeriodicTask.objects.create(name="e2e", task=ECHO, args=["e2e"], interval=every(1))
    with WorkerProcess(embedded, "-P", "solo"), BeatProcess(embedded):
        wait_until(lambda: len(runs("e2e")) >= 3, timeout=20)
        # staff change the cadence to every 3 seconds in the admin
        change = reverse("admin:django_tasks_q_periodictask_change", args=[task.pk])
        edited = admin_client.post(change, form_data(name="e2e", task=ECHO, args='["e2e"]', every="3"))
        assert edited.status_code == 302
        assert PeriodicTask.objects.get(pk=task.pk).interval.every == 3
        time.sleep(2.0)  # the beat sees the edit within its poll interval
        before = len(runs("e2e"))
        time.sleep(4.5)
        assert 1 <= len(runs("e2e")) - before <= 2  # every 3 s now: at most 2 in 4.5 s, not 4 or 5
        PeriodicTask.objects.filter(pk=task.pk).update(enabled=False)  # update(): no signal, still seen
        time.sleep(1.5)
        stopped_at = len(runs("e2e"))
        time.sleep(3.0)
        assert len(runs("e2e")) == stopped_at
    task.refresh_from_db()
    assert task.total_run_count == stopped_at


def test_two_beats_send_each_slot_once_and_the_survivor_takes_over(embedded):
    PeriodicTask.objects.create(name="pair", task=ECHO, args=["pair"], interval=every(1))
    with WorkerProcess(embedded, "-P", "threads", "-c", "2"):
        first = BeatProcess(embedded).start()
        second = BeatProcess(embedded).start()
        try:
            time.sleep(5)  # both beats running side by side
            assert len(runs("pair")) >= 3
            leader, follower = (first, second) if "holds the lease" in first.output() else (second, first)
            assert "holds the lease" in leader.output() and "holds the lease" not in follower.output()
            leader.kill()  # SIGKILL: the lease is not released, it must run out
            killed_at = len(runs("pair"))
            follower.wait_for("holds the lease", timeout=15)
            wait_until(lambda: len(runs("pair")) >= killed_at + 3, timeout=20)
        finally:
            first.kill()
            second.kill()
    # What was sent, from both beats' own logs ("sent <task>[<id>] for <slot>"): the start times of
    # the runs would also reflect how busy the worker was, not what beat did.
    slots = re.findall(r"periodic task 'pair': sent \S+ for (\S+)", first.output() + second.output())
    assert len(slots) == len(set(slots)), "a slot was sent twice"
    times = sorted(datetime.fromisoformat(slot) for slot in slots)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert min(gaps) > 0.5, f"two slots {min(gaps):.3f}s apart"
    assert PeriodicTask.objects.get(name="pair").total_run_count == len(slots)


def test_worker_beat_flag_embeds_the_scheduler(embedded):
    PeriodicTask.objects.create(name="embedded", task=ECHO, args=["embedded"], interval=every(1))
    with WorkerProcess(embedded, "-P", "solo", "--beat") as worker:
        wait_until(lambda: len(runs("embedded")) >= 2, timeout=20)
        assert "beat started" in worker.output()


__all__ = ["worker_env"]


def test_beat_stops_within_a_second_of_sigterm_in_the_middle_of_a_long_check(embedded):
    # 40,000 tasks on as many different monthly crontabs: nothing is shared between them, so the first check
    # counts each from now with an UPDATE and a croniter walk of its own -- several seconds
    schedules = CrontabSchedule.objects.bulk_create([
        CrontabSchedule(minute=str(number % 60), hour=str(number // 60 % 24), day_of_month=str(number // 1440 + 1),
                        timezone="Europe/London") for number in range(40000)])
    PeriodicTask.objects.bulk_create([PeriodicTask(name=f"many-{number}", task=ECHO, crontab=schedule)
                                      for number, schedule in enumerate(schedules)])
    beat = BeatProcess(embedded).start()
    try:
        time.sleep(1.0)
        assert PeriodicTask.objects.filter(baseline_at__isnull=True).exists(), "the check ended before the signal"
        signalled = time.monotonic()
        beat.process.send_signal(signal.SIGTERM)
        beat.process.wait(timeout=15)
        stopped_in = time.monotonic() - signalled
    finally:
        beat.kill()
    assert stopped_in < 1.5, f"beat took {stopped_in:.1f}s to stop"
    assert "beat stopped" in beat.output()
    assert BeatLease.objects.get(name="beat").holder == ""  # released: another beat may lead at once


POSTGRES_INDEX_CHECK = """
from datetime import datetime, timedelta, timezone

import django

django.setup()
from django.db import connection

from django_tasks_q.beat.lock import Lease
from django_tasks_q.beat.scheduler import Scheduler
from django_tasks_q.models import IntervalSchedule, PeriodicTask

assert connection.vendor == "postgresql"
T0 = datetime(2026, 3, 2, 12, tzinfo=timezone.utc)
hourly = IntervalSchedule.objects.create(every=3600, period="seconds")
minutely = IntervalSchedule.objects.create(every=60, period="seconds")
PeriodicTask.objects.bulk_create([PeriodicTask(name=f"pg-{n}", task="testproject.videos.tasks.noop",
                                               interval=hourly) for n in range(1200)])
scheduler, lease = Scheduler(), Lease()
scheduler.tick(lease, T0)
assert not PeriodicTask.objects.filter(next_run_at__isnull=True).exists()
assert set(PeriodicTask.objects.values_list("next_run_at", flat=True)) == {T0 + timedelta(hours=1)}
PeriodicTask.objects.filter(name="pg-1").update(interval=minutely)
assert PeriodicTask.objects.get(name="pg-1").next_run_at is None
PeriodicTask.objects.filter(name="pg-2").update(description="words only")
assert PeriodicTask.objects.get(name="pg-2").next_run_at is not None
with connection.cursor() as cursor:
    cursor.execute("UPDATE django_tasks_q_intervalschedule SET every = 7200 WHERE id = %s", [hourly.pk])
assert PeriodicTask.objects.filter(next_run_at__isnull=True).count() == 1200
scheduler.tick(lease, T0 + timedelta(seconds=1))
assert PeriodicTask.objects.get(name="pg-1").next_run_at == T0 + timedelta(seconds=61)
assert PeriodicTask.objects.get(name="pg-3").next_run_at == T0 + timedelta(seconds=7201)
scheduler.tick(lease, T0 + timedelta(seconds=61))
assert PeriodicTask.objects.get(name="pg-1").total_run_count == 1
assert PeriodicTask.objects.get(name="pg-1").next_run_at == T0 + timedelta(seconds=121)
copy = PeriodicTask.objects.get(name="pg-1")
copy.pk, copy.name = None, "pg-copy"
copy.save()
assert PeriodicTask.objects.get(name="pg-copy").next_run_at is None  # a new row starts unplanned
before = PeriodicTask.objects.get(name="pg-2").plan_version
PeriodicTask.objects.filter(name="pg-2").update(start_time=T0)
assert PeriodicTask.objects.get(name="pg-2").plan_version == before + 1  # counted: a plan read before is stale
print("due-time index ok")
"""


def test_the_due_time_index_and_its_triggers_on_postgresql(postgres_url, tmp_path):
    from tests import servers

    url = servers.create_database(postgres_url, f"tq_beat_{uuid.uuid4().hex[:12]}")
    env = {**worker_env("memory://"), "TESTPROJECT_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("TESTPROJECT_SQLITE", None)
    migrate = subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    script = tmp_path / "check.py"
    script.write_text(POSTGRES_INDEX_CHECK)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "due-time index ok" in done.stdout, done.stdout + done.stderr
