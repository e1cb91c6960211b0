"""Worker behaviour that needs its own worker process per test: pools, shutdown,
hooks, result expiry, signing, the banner. Runs on the embedded broker and on
Redis; RabbitMQ runs the same code paths in test_spine."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from django_tasks_q.core.states import TaskState
from django_tasks_q.models import TaskResult
from testproject.videos.tasks import add, audited, compress, sleep, write_row
from tests.workers import WorkerProcess

from .test_spine import wait_until


@pytest.fixture(params=["django", "redis"])
def broker(request, settings, transactional_db):
    url = "django://" if request.param == "django" else request.getfixturevalue("redis_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    return url


def test_prefork_pool_runs_tasks_in_child_processes(broker):
    with WorkerProcess(broker, "-P", "prefork", "-c", "2") as worker:
        results = [write_row.delay(f"group-{i}") for i in range(6)]
        assert all(isinstance(r.get(timeout=20), int) for r in results)
        assert "prefork (concurrency 2" in worker.output()
        # two sleeps run at the same time on two children
        started = time.monotonic()
        pair = [sleep.delay(1.0), sleep.delay(1.0)]
        assert [r.get(timeout=20) for r in pair] == [1.0, 1.0]
        assert time.monotonic() - started < 1.9


def test_prefork_replaces_a_child_after_max_tasks(broker):
    with WorkerProcess(broker, "-P", "prefork", "-c", "1", "--max-tasks-per-child", "2") as worker:
        assert [add.delay(i, i).get(timeout=20) for i in range(5)] == [0, 2, 4, 6, 8]
        assert "exited" not in worker.output()  # retiring children are not reported as lost


def test_warm_shutdown_finishes_the_running_task(broker):
    worker = WorkerProcess(broker, "-P", "threads", "-c", "1").start()
    try:
        result = sleep.delay(1.5)
        wait_until(lambda: result.state == TaskState.STARTED, timeout=15)
        worker.signal(signal.SIGTERM)
        assert worker.process.wait(20) == 0
        assert result.state == TaskState.SUCCESS and result.get(timeout=1) == 1.5
        assert "warm shutdown" in worker.output()
    finally:
        worker.kill()


def test_warm_shutdown_gives_back_prefetched_tasks(broker):
    """Tasks received but not started when SIGTERM arrives go back to the queue."""
    worker = WorkerProcess(broker, "-P", "solo", "--prefetch-multiplier", "4").start()
    try:
        first = sleep.delay(1.5)
        waiting = [add.delay(i, 1) for i in range(3)]
        wait_until(lambda: first.state == TaskState.STARTED, timeout=15)
        worker.signal(signal.SIGTERM)
        assert worker.process.wait(20) == 0
    finally:
        worker.kill()
    assert first.get(timeout=1) == 1.5
    with WorkerProcess(broker, "-P", "solo"):
        assert [r.get(timeout=20) for r in waiting] == [1, 2, 3]


def test_hooks_run_in_the_worker(broker):
    log = tempfile.NamedTemporaryFile(delete=False).name
    try:
        with WorkerProcess(broker, "-P", "solo", env={"TESTPROJECT_HOOK_LOG": log}):
            ok, bad = audited.delay(21), audited.delay(-1)
            assert ok.get(timeout=20) == 42
            with pytest.raises(ValueError):
                bad.get(timeout=20)
            lines = wait_until(lambda: len(open(log).read().splitlines()) >= 4 and open(log).read().splitlines())
        assert f"success {ok.id} 42" in lines and f"after_return {ok.id} SUCCESS" in lines
        assert f"failure {bad.id} ValueError" in lines and f"after_return {bad.id} FAILURE" in lines
    finally:
        os.unlink(log)


def test_expired_results_are_cleaned_by_the_worker(broker):
    old = TaskResult.objects.create(task_id="old-one", state="SUCCESS",
                                    date_done=timezone.now() - timedelta(seconds=30))
    running = TaskResult.objects.create(task_id="still-running", state="STARTED")
    with WorkerProcess(broker, "-P", "solo", env={"TASKS_Q_RESULT_EXPIRES": "5"}) as worker:
        wait_until(lambda: not TaskResult.objects.filter(pk=old.pk).exists(), timeout=15)
        fresh = add.delay(1, 1)
        assert fresh.get(timeout=20) == 2
        assert TaskResult.objects.filter(pk=running.pk).exists()  # unfinished results are kept
        assert "removed 1 results" in worker.output()


def test_signed_messages(broker, settings):
    with WorkerProcess(broker, "-P", "solo", env={"TASKS_Q_SIGNING_KEY": "s3cret" * 8}) as worker:
        settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": "s3cret" * 8}
        assert add.delay(3, 4).get(timeout=20) == 7
        settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": None}
        unsigned = add.delay(5, 5)
        worker.wait_for(unsigned.id)
        assert "unsigned message refused" in worker.output()
        time.sleep(0.3)
        assert unsigned.state == "PENDING"  # refused, not run
        settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": "wrong" * 8}
        forged = add.delay(6, 6)
        worker.wait_for(forged.id)
        assert "bad signature" in worker.output()
        assert forged.state == "PENDING"


NEW_KEY, OLD_KEY, RETIRED_KEY = "2026-new-" + "n" * 32, "2025-old-" + "o" * 32, "2024-retired-" + "r" * 32


def test_signing_keys_rotate(broker, settings):
    """``SIGNING_KEY = [new, old]``: the worker accepts both while senders move to the new key; a key
    taken out of the list is refused from then on, its message never runs."""
    with WorkerProcess(broker, "-P", "solo", env={"TASKS_Q_SIGNING_KEY": json.dumps([NEW_KEY, OLD_KEY])}) as worker:
        for key in (NEW_KEY, OLD_KEY):
            settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": key}
            assert add.delay(1, 2).get(timeout=20) == 3
        settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": [RETIRED_KEY, NEW_KEY]}  # signs with the first
        retired = add.delay(2, 2)
        worker.wait_for(retired.id)
        assert "matches none of the 2 accepted SIGNING_KEY key(s)" in worker.output()
        time.sleep(0.3)
        assert retired.state == "PENDING"  # refused, not run


def test_banner_masks_the_broker_password(redis_url, settings, transactional_db):
    # redis accepts any password when none is configured, so a URL with one still works
    url = redis_url.replace("redis://", "redis://:hunter2@")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    with WorkerProcess(url, "-P", "solo", "-Q", "videos,reports") as worker:
        assert add.apply_async((1, 2), queue="videos").get(timeout=20) == 3
        out = worker.output()
    assert "hunter2" not in out and ":**@" in out
    assert "queues:      videos, reports" in out
    assert "testproject.videos.tasks.add" in out and "reports.build" in out


@pytest.mark.parametrize("scheme", ["django", "redis"])
def test_long_acks_late_task_is_not_redelivered_past_the_visibility_timeout(scheme, request, settings,
                                                                            transactional_db):
    """A solo worker busy for 3 visibility timeouts keeps its message: its keeper thread renews it."""
    url = "django://" if scheme == "django" else request.getfixturevalue("redis_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    # unacked_restore_throttle 1: an idle Redis consumer sweeps for overdue messages on every poll
    options = {"TASKS_Q_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 1, "unacked_restore_throttle": 1}'}
    with WorkerProcess(url, "-P", "solo", "-Q", "videos", "-n", "one@%h", env=options) as one, \
            WorkerProcess(url, "-P", "solo", "-Q", "videos", "-n", "two@%h", env=options) as two:
        results = [compress.delay(1, steps=1, delay=3)]  # one runs it, the other idles and would steal
        assert results[0].get(timeout=30)["video_id"] == 1
        time.sleep(1.5)
        for result in results:
            runs = one.output().count(f"[{result.id}] succeeded") + two.output().count(f"[{result.id}] succeeded")
            assert runs == 1, f"{result.id} ran {runs} times"
