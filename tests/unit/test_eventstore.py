"""The event recorder, pruning and ``activity_series``, on the real test database with hand-made events."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import pytest

from django_tasks_q import eventstore
from django_tasks_q.eventreceiver import EventReceiver, describe
from django_tasks_q.eventstore import EventRecorder, activity_series, prune
from django_tasks_q.models import TaskActivity, TaskEvent, TaskResult, Worker

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()  # a minute boundary


def task_events(uuid: str, name: str, at: float, outcome: str = "task-succeeded", runtime: float = 0.5,
                host: str = "w1@host") -> list[dict]:
    """received, started and ``outcome`` of one task; only ``task-received`` carries the name (as Celery's)."""
    base = {"uuid": uuid, "hostname": host, "utcoffset": 0, "pid": 10, "clock": 1}
    end = {"task-succeeded": {"result": "5", "runtime": runtime},
           "task-failed": {"exception": "ValueError('nope')", "traceback": "Traceback ...\nValueError: nope"},
           "task-retried": {"exception": "IOError('again')", "traceback": "Traceback ..."}}[outcome]
    return [{**base, "type": "task-received", "name": name, "args": "(2, 3)", "kwargs": "{}", "timestamp": at},
            {**base, "type": "task-started", "timestamp": at + 0.1},
            {**base, "type": outcome, "timestamp": at + 0.2, **end}]


def celery_worker_event(kind: str, at: float, host: str = "celery@box", **fields) -> dict:
    return {"type": kind, "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 777, "clock": 3, "freq": 2.0,
            "sw_ident": "py-celery", "sw_ver": "5.5.3", "sw_sys": "Linux", "active": 1, "processed": 12,
            "loadavg": [0.5, 0.4, 0.3], **fields}


def test_a_batch_becomes_raw_rows_rollups_and_names_from_received():
    recorder = EventRecorder(clock=lambda: T0)
    batch = (task_events("a1", "videos.add", T0 + 1, runtime=0.5) + task_events("a2", "videos.add", T0 + 2, runtime=1.5)
             + task_events("f1", "videos.fail", T0 + 3, outcome="task-failed")
             + task_events("r1", "videos.flaky", T0 + 61, outcome="task-retried"))
    for event in batch:
        recorder.add(event)
    assert TaskEvent.objects.count() == 0  # nothing written before the flush
    assert recorder.flush() == 12 and recorder.pending == []

    assert TaskEvent.objects.count() == 12
    done = TaskEvent.objects.get(task_id="a2", event="task-succeeded")
    assert (done.task_name, done.state, done.runtime, done.hostname) == ("videos.add", "SUCCESS", 1.5, "w1@host")
    assert done.timestamp == datetime.fromtimestamp(T0 + 2.2, tz=timezone.utc) and done.data["result"] == "5"
    failed = TaskEvent.objects.get(task_id="f1", event="task-failed")
    assert failed.task_name == "videos.fail" and failed.state == "FAILURE"
    assert failed.exception == "ValueError('nope')" and "ValueError: nope" in failed.traceback

    minute = datetime.fromtimestamp(T0, tz=timezone.utc)
    add = TaskActivity.objects.get(minute=minute, task_name="videos.add")
    assert (add.received, add.started, add.succeeded, add.failed) == (2, 2, 2, 0)
    assert (add.runtime_total, add.runtime_max) == (2.0, 1.5)
    fail = TaskActivity.objects.get(minute=minute, task_name="videos.fail")
    assert (fail.received, fail.succeeded, fail.failed) == (1, 0, 1)
    flaky = TaskActivity.objects.get(task_name="videos.flaky")
    assert flaky.minute == minute + timedelta(minutes=1) and flaky.retried == 1


def test_later_batches_add_to_the_same_minute_and_find_names_in_earlier_rows():
    first, second = task_events("a1", "videos.add", T0 + 1, runtime=2.0), task_events("a2", "videos.add", T0 + 5,
                                                                                          runtime=0.5)
    assert eventstore.record(first + second[:1]) == 4
    # a new recorder (taskevents restarted) gets a2's finish without its received event: the name comes from the rows
    assert eventstore.record(second[1:]) == 2
    # and a task whose received event it never saw is named from its TaskResult
    TaskResult.objects.create(task_id="x1", task_name="reports.build", state="SUCCESS")
    eventstore.record([{"type": "task-succeeded", "uuid": "x1", "hostname": "w", "timestamp": T0 + 7, "runtime": 1}])

    row = TaskActivity.objects.get(task_name="videos.add")
    assert (row.received, row.started, row.succeeded, row.runtime_total, row.runtime_max) == (2, 2, 2, 2.5, 2.0)
    assert TaskEvent.objects.get(task_id="a2", event="task-succeeded").task_name == "videos.add"
    assert TaskActivity.objects.get(task_name="reports.build").succeeded == 1
    assert TaskActivity.objects.count() == 2


def test_celery_workers_get_worker_rows_ours_are_left_alone():
    ours = Worker.objects.create(hostname="ours@host", pid=5, queues=["videos"], pool="threads", concurrency=4,
                                 processed=99)
    eventstore.record([
        celery_worker_event("worker-online", T0),
        celery_worker_event("worker-heartbeat", T0 + 2, processed=15),
        {**celery_worker_event("worker-heartbeat", T0 + 2, host="ours@host"), "sw_ident": "django-tasks-q",
         "processed": 1, "pid": 1},
    ])
    celery = Worker.objects.get(hostname="celery@box")
    assert (celery.pid, celery.version, celery.heartbeat_interval, celery.processed, celery.active) == (
        777, "py-celery 5.5.3", 2.0, 15, 1)
    assert celery.started_at == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert celery.last_heartbeat == datetime.fromtimestamp(T0 + 2, tz=timezone.utc)
    assert celery.load == [0.5, 0.4, 0.3] and celery.stopped_at is None
    assert celery.is_online(now=celery.last_heartbeat + timedelta(seconds=1))
    ours.refresh_from_db()
    assert (ours.pid, ours.processed, ours.queues, ours.pool) == (5, 99, ["videos"], "threads")
    # online/offline are raw rows, heartbeats are not
    assert sorted(TaskEvent.objects.values_list("event", flat=True)) == ["worker-online"]

    eventstore.record([celery_worker_event("worker-offline", T0 + 4)])
    celery.refresh_from_db()
    assert celery.stopped_at == datetime.fromtimestamp(T0 + 4, tz=timezone.utc) and celery.active == 0
    assert not celery.is_online(now=celery.last_heartbeat)


def test_malformed_events_are_skipped_with_a_reason_and_the_rest_recorded(caplog):
    recorder = EventRecorder(clock=lambda: T0)
    with caplog.at_level(logging.WARNING, logger=eventstore.__name__):
        assert recorder.add("not an event") is None
        assert recorder.add({"uuid": "x"}) is None
        assert recorder.add({"type": "task-started", "timestamp": "yesterday"}) is None
        assert recorder.add({"type": "task-started", "uuid": "u", "timestamp": float("nan")}) is None
    assert "must be a dict, got str" in caplog.text and "event without a type" in caplog.text
    assert "timestamp 'yesterday', not a number" in caplog.text
    recorder.add({"type": "task-started", "uuid": "u", "name": "n" * 400, "exception": "a\x00b"})  # no timestamp: now
    recorder.add({"type": "some-custom-event", "hostname": "h", "timestamp": T0})
    assert recorder.flush() == 2
    started = TaskEvent.objects.get(event="task-started")
    assert started.timestamp == datetime.fromtimestamp(T0, tz=timezone.utc) and len(started.task_name) == 255
    assert started.exception == "ab"
    assert TaskActivity.objects.get().started == 1  # the custom event is kept raw but counts nowhere


def test_prune_by_age_by_count_and_old_activity(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "EVENTS_KEEP_SECONDS": 3600, "EVENTS_KEEP_ROWS": 4,
                        "ACTIVITY_KEEP_DAYS": 2}
    now = datetime.fromtimestamp(T0, tz=timezone.utc)
    old = task_events("old", "videos.add", T0 - 7200)  # two hours ago: past EVENTS_KEEP_SECONDS
    recent = [event for n in range(3) for event in task_events(f"new{n}", "videos.add", T0 - 60 + n)]
    eventstore.record(old + recent)
    TaskActivity.objects.create(minute=now - timedelta(days=3), task_name="videos.add", succeeded=7)
    assert TaskEvent.objects.count() == 12 and TaskActivity.objects.count() == 3

    assert prune(now=now) == {"events": 3 + 5, "activity": 1}
    kept = list(TaskEvent.objects.order_by("id").values_list("task_id", "event"))
    assert kept == [("new1", "task-succeeded"), ("new2", "task-received"), ("new2", "task-started"),
                    ("new2", "task-succeeded")]  # the newest four
    assert not TaskActivity.objects.filter(minute__lt=now - timedelta(days=2)).exists()
    assert prune(now=now) == {"events": 0, "activity": 0}


def test_no_raw_rows_when_retention_is_zero_rollups_still_counted(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "EVENTS_KEEP_ROWS": 0}
    eventstore.record(task_events("a", "videos.add", T0))
    assert TaskEvent.objects.count() == 0 and TaskActivity.objects.get().succeeded == 1
    eventstore.record(task_events("b", "videos.add", T0), store_raw=False)
    assert TaskActivity.objects.get().succeeded == 2


def test_activity_series_buckets_oldest_first_up_to_now():
    now = datetime.fromtimestamp(T0 + 30, tz=timezone.utc)  # 12:00:30
    eventstore.record(task_events("a", "videos.add", T0 + 1, runtime=1.0)  # 12:00, the current minute
                      + task_events("b", "videos.other", T0 + 2, runtime=3.0)
                      + task_events("f", "videos.fail", T0 - 600, outcome="task-failed")  # 11:50
                      + task_events("r", "videos.flaky", T0 - 3 * 3600, outcome="task-retried"))  # outside the window

    series = activity_series(timedelta(hours=1), 6, now=now)
    assert [slot["start"] for slot in series] == [
        "2026-03-01T11:01:00+00:00", "2026-03-01T11:11:00+00:00", "2026-03-01T11:21:00+00:00",
        "2026-03-01T11:31:00+00:00", "2026-03-01T11:41:00+00:00", "2026-03-01T11:51:00+00:00"]
    assert series[-1] == {"start": "2026-03-01T11:51:00+00:00", "succeeded": 2, "failed": 0, "retried": 0,
                          "runtime_avg": 2.0}
    assert series[-2]["failed"] == 1 and series[-2]["runtime_avg"] is None  # 11:50 is in 11:41-11:51
    assert sum(slot["retried"] for slot in series) == 0
    assert sum(slot["retried"] for slot in activity_series(timedelta(hours=4), 4, now=now)) == 1

    per_minute = activity_series(timedelta(minutes=3), 3, now=now)
    assert [slot["succeeded"] for slot in per_minute] == [0, 0, 2]


@pytest.mark.parametrize("window, buckets, message", [
    (timedelta(0), 5, "window must be a positive timedelta"),
    (3600, 5, "window must be a positive timedelta, got 3600"),
    (timedelta(hours=1), 0, "buckets must be a positive int, got 0"),
    (timedelta(hours=1), 2.5, "buckets must be a positive int"),
])
def test_activity_series_refuses_bad_arguments(window, buckets, message):
    with pytest.raises(ValueError, match=message):
        activity_series(window, buckets)


def test_receiver_shows_one_line_per_event_with_names_and_records_them(settings):
    import io

    out = io.StringIO()
    now = time.time()  # housekeeping also prunes by the real clock
    receiver = EventReceiver(out=out, url="memory://")
    for event in task_events("a1", "videos.add", now, runtime=0.25) + task_events("f1", "videos.fail", now,
                                                                                  outcome="task-failed"):
        receiver.handle(event)
    receiver.on_message([celery_worker_event("worker-heartbeat", now), celery_worker_event("worker-online", now)],
                        None)
    receiver.housekeeping(force=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 7  # the heartbeat is shown only at verbosity 2
    assert lines[0].split()[1:4] == ["task-received", "videos.add[a1]", "w1@host"]
    assert lines[2].endswith("task-succeeded   videos.add[a1] w1@host 0.250s")
    assert lines[5].endswith("task-failed      videos.fail[f1] w1@host ValueError('nope')")
    assert "worker-online" in lines[6] and "celery@box active=1 processed=12" in lines[6]
    assert TaskEvent.objects.count() == 7 and Worker.objects.filter(hostname="celery@box").exists()
    assert describe({"type": "task-started", "uuid": "z", "timestamp": None}).startswith("--:--:-- task-started")


@pytest.mark.parametrize("args, message", [
    (["--freq", "0"], "--freq must be a positive number of seconds, got 0.0"),
    (["--no-store", "--quiet"], "--no-store and --quiet together would neither store nor show events"),
])
def test_taskevents_refuses_contradictory_options(args, message):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=message):
        call_command("taskevents", *args)
