"""The scheduler's decisions, driven tick by tick with explicit times.

``Scheduler.tick(lease, now)`` takes the clock as an argument, so these
tests move time by passing it; messages go to kombu's in-process
``memory://`` broker and are read back from there.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from kombu import Connection

from django_tasks_q.beat.entries import claim, next_run_at
from django_tasks_q.beat.lock import Lease
from django_tasks_q.beat.scheduler import Scheduler
from django_tasks_q.beat.sync import crontab, sync_settings_schedule
from django_tasks_q.broker import connection
from django_tasks_q.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

T0 = datetime(2026, 3, 2, 12, 0, 0, tzinfo=timezone.utc)
pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(settings):
    """Messages the scheduler published, read back from the memory broker."""
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "memory://"}
    connection.reset()

    def drain(queue="default"):
        messages = []
        with Connection("memory://") as conn:
            simple = conn.SimpleQueue(queue)
            while True:
                try:
                    message = simple.get_nowait()
                except simple.Empty:
                    break
                messages.append(message.headers)
                message.ack()
        return messages

    drain()
    yield drain
    connection.reset()


@pytest.fixture
def beat():
    scheduler = Scheduler()
    lease = Lease(ttl=6)
    return lambda now: scheduler.tick(lease, now)


def every(seconds):
    return IntervalSchedule.objects.get_or_create(every=seconds, period="seconds")[0]


def names(headers):
    return [h["periodic_task_name"] for h in headers]


def test_new_interval_task_waits_one_interval_then_runs_once(sent, beat):
    task = PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.add", interval=every(30),
                                       args=[1, 2])
    beat(T0)
    assert sent() == []  # a new schedule does not fire at once
    beat(T0 + timedelta(seconds=29))
    assert sent() == []
    beat(T0 + timedelta(seconds=30))
    headers = sent()
    assert names(headers) == ["tick"] and headers[0]["task"] == "testproject.videos.tasks.add"
    beat(T0 + timedelta(seconds=31))
    assert sent() == []
    task.refresh_from_db()
    assert task.total_run_count == 1 and task.last_run_at == T0 + timedelta(seconds=30)


def test_downtime_fires_once_not_once_per_missed_slot(sent, beat):
    PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(10))
    beat(T0)
    beat(T0 + timedelta(hours=1))  # 360 slots missed
    assert names(sent()) == ["tick"]
    beat(T0 + timedelta(hours=1, seconds=5))
    assert sent() == []
    beat(T0 + timedelta(hours=1, seconds=10))
    assert names(sent()) == ["tick"]


def test_catch_up_none_skips_missed_runs(sent, beat):
    row = CrontabSchedule.objects.create(minute="0", hour="*", timezone="UTC")
    task = PeriodicTask.objects.create(name="hourly", task="testproject.videos.tasks.noop", crontab=row,
                                       catch_up="none")
    beat(T0)
    beat(T0 + timedelta(hours=5, minutes=30))  # missed 13:00 ... 17:00
    assert sent() == []
    task.refresh_from_db()
    assert task.last_run_at == T0 + timedelta(hours=5) and task.total_run_count == 0
    beat(T0 + timedelta(hours=6))  # 18:00 on time
    assert names(sent()) == ["hourly"]


def test_crontab_runs_at_its_slots(sent, beat):
    row = CrontabSchedule.objects.create(minute="*/15", hour="*", timezone="UTC")
    PeriodicTask.objects.create(name="quarter", task="testproject.videos.tasks.noop", crontab=row)
    beat(T0 + timedelta(minutes=1))
    beat(T0 + timedelta(minutes=14, seconds=59))
    assert sent() == []
    beat(T0 + timedelta(minutes=15))
    assert names(sent()) == ["quarter"]


def test_an_edit_by_queryset_update_rebases_instead_of_firing(sent, beat):
    task = PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(60))
    beat(T0)
    beat(T0 + timedelta(seconds=60))
    assert names(sent()) == ["tick"]
    # 50 s later someone shortens the interval to 5 s with update(): counts from the edit
    PeriodicTask.objects.filter(pk=task.pk).update(interval=every(5))
    beat(T0 + timedelta(seconds=110))
    assert sent() == []
    beat(T0 + timedelta(seconds=115))
    assert names(sent()) == ["tick"]


def test_disabled_task_does_not_run(sent, beat):
    task = PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(1))
    beat(T0)
    PeriodicTask.objects.filter(pk=task.pk).update(enabled=False)
    beat(T0 + timedelta(seconds=5))
    assert sent() == []


def test_clocked_runs_once_then_disables(sent, beat):
    clock = ClockedSchedule.objects.create(clocked_time=T0 + timedelta(minutes=10))
    task = PeriodicTask.objects.create(name="once", task="testproject.videos.tasks.noop", clocked=clock)
    beat(T0)
    beat(T0 + timedelta(minutes=10))
    beat(T0 + timedelta(minutes=11))
    assert names(sent()) == ["once"]
    task.refresh_from_db()
    assert task.enabled is False and task.total_run_count == 1


def test_start_time_and_expires_bound_the_runs(sent, beat):
    PeriodicTask.objects.create(name="window", task="testproject.videos.tasks.noop", interval=every(10),
                                start_time=T0 + timedelta(minutes=5), expires=T0 + timedelta(minutes=6))
    beat(T0)
    beat(T0 + timedelta(minutes=4))
    assert sent() == []
    beat(T0 + timedelta(minutes=5))
    assert names(sent()) == ["window"]
    beat(T0 + timedelta(minutes=7))
    assert sent() == []  # past expires


def test_runs_go_through_routing_and_expiry(sent, beat):
    PeriodicTask.objects.create(name="routed", task="testproject.videos.tasks.noop", interval=every(10),
                                queue="reports", priority=3, expire_seconds=30)
    beat(T0)
    beat(T0 + timedelta(seconds=10))
    assert sent() == []
    (headers,) = sent("reports")
    assert headers["expires"] is not None


def test_two_schedulers_claim_a_slot_once(sent):
    task = PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(1),
                                       last_run_at=T0)
    mine, theirs = PeriodicTask.objects.get(pk=task.pk), PeriodicTask.objects.get(pk=task.pk)
    assert claim(mine, T0 + timedelta(seconds=1), counted=True) is True
    assert claim(theirs, T0 + timedelta(seconds=1), counted=True) is False
    assert PeriodicTask.objects.get(pk=task.pk).total_run_count == 1


def test_only_the_lease_holder_sends_and_a_dead_leader_is_replaced(sent):
    PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(1))
    first, second = Lease(ttl=6), Lease(ttl=6)
    a, b = Scheduler(), Scheduler()
    a.tick(first, T0)
    b.tick(second, T0)
    assert a.leading and not b.leading
    for s in range(1, 5):
        a.tick(first, T0 + timedelta(seconds=s))
        b.tick(second, T0 + timedelta(seconds=s))
    assert len(sent()) == 4
    # the leader stops renewing (died): the other takes over once the lease runs out
    b.tick(second, T0 + timedelta(seconds=8))
    assert not b.leading
    b.tick(second, T0 + timedelta(seconds=11))
    assert b.leading and len(sent()) == 1


def test_send_failure_gives_the_run_back(settings, beat):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "redis://127.0.0.1:1/0", "BROKER_PUBLISH_RETRIES": 0,
                        "BROKER_CONNECTION_TIMEOUT": 0.2}
    connection.reset()
    task = PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(10))
    beat(T0)
    beat(T0 + timedelta(seconds=10))
    task.refresh_from_db()
    assert task.last_run_at is None and task.total_run_count == 0 and task.enabled
    connection.reset()


def test_next_run_at_for_the_admin(beat):
    task = PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(30))
    beat(T0)
    task.refresh_from_db()
    assert next_run_at(task, T0) == T0 + timedelta(seconds=30)
    task.enabled = False
    assert next_run_at(task, T0) is None


def test_beat_schedule_from_settings_is_synced_and_removals_disabled(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "BEAT_SCHEDULE": {
        "add-every-30s": {"task": "testproject.videos.tasks.add", "schedule": 30.0, "args": (16, 16)},
        "monday-report": {"task": "reports.build", "schedule": crontab(hour=7, minute=30, day_of_week=1,
                                                                        timezone="Asia/Shanghai"),
                          "kwargs": {"day": "monday"}, "options": {"queue": "reports"}},
        "daily": {"task": "testproject.videos.tasks.noop", "schedule": timedelta(days=1)},
    }}
    sync_settings_schedule()
    add = PeriodicTask.objects.get(name="add-every-30s")
    assert add.source == "settings" and add.interval.every == 30 and add.args == [16, 16]
    report = PeriodicTask.objects.get(name="monday-report")
    assert (report.crontab.hour, report.crontab.minute, report.crontab.day_of_week) == ("7", "30", "1")
    assert report.crontab.timezone == "Asia/Shanghai" and report.queue == "reports"
    assert PeriodicTask.objects.get(name="daily").interval.every == 86400
    settings.TASKS_Q = {**settings.TASKS_Q, "BEAT_SCHEDULE": {
        "add-every-30s": {"task": "testproject.videos.tasks.add", "schedule": 60, "args": [1, 1]}}}
    sync_settings_schedule()
    assert PeriodicTask.objects.get(name="add-every-30s").interval.every == 60
    gone = PeriodicTask.objects.get(name="monday-report")
    assert gone.enabled is False and "Removed from BEAT_SCHEDULE" in gone.description


def test_beat_schedule_errors_name_the_entry(settings):
    from django_tasks_q.exceptions import ImproperlyConfigured

    settings.TASKS_Q = {**settings.TASKS_Q, "BEAT_SCHEDULE": {"bad": {"task": "x", "schedule": "often"}}}
    with pytest.raises(ImproperlyConfigured, match="BEAT_SCHEDULE\\['bad'\\]\\['schedule'\\]"):
        sync_settings_schedule()


def test_an_edit_by_raw_sql_is_seen_too(sent, beat):
    from django.db import connection as db

    task = PeriodicTask.objects.create(name="tick", task="testproject.videos.tasks.noop", interval=every(60))
    beat(T0)
    faster = every(5)
    with db.cursor() as cursor:
        cursor.execute(f"UPDATE {PeriodicTask._meta.db_table} SET interval_id = %s WHERE id = %s", [faster.pk, task.pk])
    beat(T0 + timedelta(seconds=30))  # rebased at 30 s, not fired
    assert sent() == []
    beat(T0 + timedelta(seconds=35))
    assert names(sent()) == ["tick"]


@pytest.mark.parametrize("kinds", [(), ("interval", "crontab"), ("interval", "crontab", "clocked", "solar")])
def test_the_database_refuses_anything_but_exactly_one_schedule(kinds):
    from django.db import IntegrityError, transaction

    from django_tasks_q.models import SolarSchedule

    rows = {"interval": every(5), "crontab": CrontabSchedule.objects.create(),
            "clocked": ClockedSchedule.objects.create(clocked_time=T0),
            "solar": SolarSchedule.objects.create(event="sunrise", latitude=51.5, longitude=-0.12)}
    with pytest.raises(IntegrityError), transaction.atomic():
        PeriodicTask.objects.create(name="bad", task="x", **{kind: rows[kind] for kind in kinds})
    PeriodicTask.objects.create(name="good", task="x", solar=rows["solar"])  # one is fine


def test_clocked_task_first_seen_after_its_time_runs_once(sent, beat):
    clock = ClockedSchedule.objects.create(clocked_time=T0 - timedelta(seconds=5))
    task = PeriodicTask.objects.create(name="late", task="testproject.videos.tasks.noop", clocked=clock)
    beat(T0)
    beat(T0 + timedelta(seconds=1))
    assert names(sent()) == ["late"]
    task.refresh_from_db()
    assert task.enabled is False


def test_settings_sync_reuses_duplicate_schedule_rows_and_validates_options(settings):
    from django_tasks_q.exceptions import ImproperlyConfigured

    CrontabSchedule.objects.create(minute="0", hour="7")
    CrontabSchedule.objects.create(minute="0", hour="7")  # staff made a duplicate
    settings.TASKS_Q = {**settings.TASKS_Q, "TIMEZONE": "UTC", "BEAT_SCHEDULE": {
        "seven": {"task": "x", "schedule": crontab(minute=0, hour=7), "options": {"expires": timedelta(minutes=5)}}}}
    sync_settings_schedule()
    assert PeriodicTask.objects.get(name="seven").expire_seconds == 300
    for bad, match in [({"options": {"priority": 300}}, "priority"), ({"catch_up": "always"}, "catch_up"),
                       ({"options": {"expires": "soon"}}, "expires")]:
        settings.TASKS_Q = {**settings.TASKS_Q, "BEAT_SCHEDULE": {"bad": {"task": "x", "schedule": 5, **bad}}}
        with pytest.raises(ImproperlyConfigured, match=f"BEAT_SCHEDULE\\['bad'\\].*{match}"):
            sync_settings_schedule()


def test_many_new_tasks_on_a_few_schedules_are_counted_in_a_few_statements(sent, beat):
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    rows = [CrontabSchedule.objects.create(minute=str(minute), hour="*/3", timezone="Europe/London")
            for minute in (5, 10, 15)]
    PeriodicTask.objects.bulk_create([PeriodicTask(name=f"bulk-{number}", task="testproject.videos.tasks.noop",
                                                   crontab=rows[number % 3]) for number in range(1200)])
    with CaptureQueriesContext(db) as first:
        beat(T0)
    rebases = [query for query in first.captured_queries if query["sql"].startswith("UPDATE")
               and "schedule_fingerprint" in query["sql"]]
    assert 1 <= len(rebases) <= 3 * 3  # per chunk of 500, one per schedule: not one per task (1,200)
    assert not PeriodicTask.objects.filter(baseline_at__isnull=True).exists()
    assert set(PeriodicTask.objects.values_list("baseline_at", flat=True)) == {T0}
    with CaptureQueriesContext(db) as second:
        beat(T0 + timedelta(seconds=1))
    assert not [query for query in second.captured_queries if query["sql"].startswith("UPDATE")
                and "schedule_fingerprint" in query["sql"]]
    assert sent() == []
    beat(T0 + timedelta(minutes=5))  # 12:05 in London (GMT in March), an hour */3 allows: minute 5's third runs
    assert len(sent()) == 400


def test_edits_by_any_means_empty_the_stored_next_run(sent, beat):
    from django.db import connection as db

    hourly = every(3600)
    task = PeriodicTask.objects.create(name="planned", task="testproject.videos.tasks.noop", interval=hourly)
    other = PeriodicTask.objects.create(name="untouched", task="testproject.videos.tasks.noop",
                                        crontab=CrontabSchedule.objects.create(minute="0", hour="9", timezone="UTC"))

    def planned(row):
        return PeriodicTask.objects.get(pk=row.pk).next_run_at

    beat(T0)
    assert planned(task) == T0 + timedelta(hours=1) and planned(other) is not None
    PeriodicTask.objects.filter(pk=task.pk).update(interval=every(60))  # update(): no save(), no signal
    assert planned(task) is None and planned(other) is not None
    beat(T0 + timedelta(seconds=1))
    assert planned(task) == T0 + timedelta(seconds=61)  # counted from the check that saw the edit
    with db.cursor() as cursor:  # raw SQL on the schedule row: every task using it is planned again
        cursor.execute("UPDATE django_tasks_q_intervalschedule SET every = 30 WHERE id = %s",
                       [PeriodicTask.objects.get(pk=task.pk).interval_id])
    assert planned(task) is None and planned(other) is not None
    PeriodicTask.objects.filter(pk=other.pk).update(description="words only")  # not a timing change
    assert planned(other) is not None
    PeriodicTask.objects.filter(pk=other.pk).update(enabled=False)
    assert planned(other) is None


def test_a_check_reads_only_due_and_unplanned_tasks(sent, beat):
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    hourly = every(3600)
    PeriodicTask.objects.bulk_create([PeriodicTask(name=f"hourly-{number}", task="testproject.videos.tasks.noop",
                                                   interval=hourly) for number in range(1200)])
    beat(T0)  # plans all 1,200
    assert not PeriodicTask.objects.filter(next_run_at__isnull=True).exists()
    with CaptureQueriesContext(db) as checked:
        beat(T0 + timedelta(seconds=1))
    reads = [query["sql"] for query in checked.captured_queries
             if query["sql"].startswith("SELECT") and "django_tasks_q_periodictask" in query["sql"]]
    assert reads and all("next_run_at" in sql for sql in reads), reads  # never every row
    beat(T0 + timedelta(hours=1))
    assert len(sent()) == 1200


def test_a_large_insert_is_planned_over_several_checks_that_send_what_is_due_first(sent, beat, monkeypatch):
    from django_tasks_q.beat import scheduler

    monkeypatch.setattr(scheduler, "PLAN_PER_CHECK", 500)
    due_soon = PeriodicTask.objects.create(name="due-soon", task="testproject.videos.tasks.noop", interval=every(1))
    beat(T0)  # planned alone: due at T0 + 1 s
    hourly = every(3600)
    PeriodicTask.objects.bulk_create([PeriodicTask(name=f"late-{number}", task="testproject.videos.tasks.noop",
                                                   interval=hourly) for number in range(1200)])
    beat(T0 + timedelta(seconds=1))
    assert names(sent()) == ["due-soon"]  # sent first; then this check planned 500 rows: due-soon again (its
    assert PeriodicTask.objects.filter(next_run_at__isnull=True).count() == 701  # run emptied its plan), 499 new
    beat(T0 + timedelta(seconds=1, milliseconds=10))
    beat(T0 + timedelta(seconds=1, milliseconds=20))
    assert not PeriodicTask.objects.filter(next_run_at__isnull=True).exists()
    assert PeriodicTask.objects.get(pk=due_soon.pk).total_run_count == 1


def test_an_edit_made_during_a_check_is_not_overwritten_by_the_plan_it_read(sent, beat, monkeypatch):
    from django_tasks_q.beat import scheduler

    task = PeriodicTask.objects.create(name="edited-meanwhile", task="testproject.videos.tasks.noop",
                                       interval=every(3600))
    real = scheduler.entries.next_run_at

    def next_run_at_while_someone_edits(row, now):
        PeriodicTask.objects.filter(pk=task.pk).update(interval=every(60))  # lands between the read and the plan
        monkeypatch.setattr(scheduler.entries, "next_run_at", real)
        return real(row, now)

    monkeypatch.setattr(scheduler.entries, "next_run_at", next_run_at_while_someone_edits)
    beat(T0)
    assert PeriodicTask.objects.get(pk=task.pk).next_run_at is None  # the hourly plan was not stored over it
    beat(T0 + timedelta(seconds=1))
    assert PeriodicTask.objects.get(pk=task.pk).next_run_at == T0 + timedelta(seconds=61)


def test_a_stale_instance_saved_with_an_old_plan_still_empties_it(sent, beat):
    task = PeriodicTask.objects.create(name="stale", task="testproject.videos.tasks.noop", interval=every(3600))
    beat(T0)
    stale = PeriodicTask.objects.get(pk=task.pk)  # carries the plan T0 + 1 h
    PeriodicTask.objects.filter(pk=task.pk).update(start_time=T0 + timedelta(minutes=30))  # someone else's edit
    beat(T0 + timedelta(seconds=1))
    assert PeriodicTask.objects.get(pk=task.pk).next_run_at == T0 + timedelta(minutes=30)  # planned anew
    stale.interval = every(60)
    stale.save()  # writes every column: its interval, and its stale plan (T0 + 1 h)
    assert PeriodicTask.objects.get(pk=task.pk).next_run_at is None  # the interval changed: planned again


def test_a_copied_row_starts_unplanned(sent, beat):
    task = PeriodicTask.objects.create(name="original", task="testproject.videos.tasks.noop", interval=every(3600))
    beat(T0)
    copy = PeriodicTask.objects.get(pk=task.pk)
    assert copy.next_run_at is not None
    copy.pk, copy.name = None, "copy"
    copy.save()
    assert PeriodicTask.objects.get(name="copy").next_run_at is None


def test_an_old_copy_saved_without_a_timing_change_does_not_bring_back_its_plan(sent, beat):
    daily = IntervalSchedule.objects.create(every=86400, period="seconds")
    task = PeriodicTask.objects.create(name="old-copy", task="testproject.videos.tasks.noop", interval=daily)
    beat(T0)
    old = PeriodicTask.objects.get(pk=task.pk)  # carries the plan T0 + 1 day
    IntervalSchedule.objects.filter(pk=daily.pk).update(every=90)
    beat(T0 + timedelta(seconds=1))
    assert PeriodicTask.objects.get(pk=task.pk).next_run_at == T0 + timedelta(seconds=91)
    old.description = "words only"
    old.save()
    assert PeriodicTask.objects.get(pk=task.pk).next_run_at == T0 + timedelta(seconds=91)
    assert PeriodicTask.objects.get(pk=task.pk).description == "words only"


def test_writing_an_old_plan_version_counts_as_a_change(sent, beat):
    from django.db import connection as db

    task = PeriodicTask.objects.create(name="old-version", task="testproject.videos.tasks.noop",
                                       interval=every(3600))
    beat(T0)
    PeriodicTask.objects.filter(pk=task.pk).update(start_time=T0)  # version 1, plan emptied
    beat(T0 + timedelta(seconds=1))
    with db.cursor() as cursor:  # an old copy written back by raw SQL: its version and its plan
        cursor.execute("UPDATE django_tasks_q_periodictask SET plan_version = 0, next_run_at = %s WHERE id = %s",
                       [T0 + timedelta(days=1), task.pk])
    row = PeriodicTask.objects.get(pk=task.pk)
    assert row.next_run_at is None and row.plan_version == 2
