"""``taskworker -P gevent``: greenlets in one monkey-patched process, on a real Redis worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from django_tasks_q import TaskState
from django_tasks_q.exceptions import TaskRevokedError
from testproject.videos.tasks import gevent_nap, naps
from tests.integration.test_spine import wait_until
from tests.workers import ROOT, WorkerProcess, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_hundred_sleeping_tasks_run_at_once_in_one_process(redis_url, broker):
    """100 x ``time.sleep(1)`` (100 s one after another): gevent's patched sleep lets them all wait together."""
    results_url = redis_url.replace("/0", "/1")
    broker(redis_url, RESULT_BACKEND=results_url)
    results = [gevent_nap.delay(1) for _ in range(100)]
    with WorkerProcess(redis_url, "-P", "gevent", "-c", "100", "-n", "gevent@%h",
                       env={"TASKS_Q_RESULT_BACKEND": results_url}) as worker:
        started = time.monotonic()
        outcomes = [result.get(timeout=60) for result in results]
        elapsed = time.monotonic() - started
        output = worker.output()
    assert " pool:        gevent (concurrency 100" in output
    assert len({outcome["pid"] for outcome in outcomes}) == 1  # one process ran them all
    assert outcomes[0]["pid"] == worker.process.pid  # re-exec'ed in place: the same pid
    assert elapsed < 15, f"100 x sleep(1) took {elapsed:.1f}s on -P gevent -c 100 (100 s if run one by one)"


def test_soft_time_limit_and_terminate_interrupt_a_sleeping_greenlet(redis_url, broker):
    """Delivered with greenlet.throw: even one long ``time.sleep`` is cut short (the threads pool waits it out)."""
    results_url = redis_url.replace("/0", "/1")
    broker(redis_url, RESULT_BACKEND=results_url)
    with WorkerProcess(redis_url, "-P", "gevent", "-c", "4", "-n", "gevent-limits@%h",
                       env={"TASKS_Q_RESULT_BACKEND": results_url}) as worker:
        started = time.monotonic()
        assert naps.delay(30).get(timeout=15)["soft_limit"] == "soft time limit (0.5s) exceeded"
        assert time.monotonic() - started < 5

        long = gevent_nap.delay(60)
        wait_until(lambda: long.state == TaskState.STARTED, timeout=10)
        started = time.monotonic()
        long.revoke(terminate=True)
        with pytest.raises(TaskRevokedError):
            long.get(timeout=15)
        assert time.monotonic() - started < 10
        assert gevent_nap.delay(0).get(timeout=15)["pid"] == worker.process.pid  # and it goes on serving


def test_without_gevent_the_command_says_what_to_install(tmp_path):
    """A ``gevent`` that cannot be imported (a stand-in on PYTHONPATH) gives a CommandError naming the extra."""
    (tmp_path / "gevent.py").write_text("raise ImportError('no gevent here')\n")
    env = {**worker_env("memory://"), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "taskworker", "--pool=gevent"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert ("-P gevent needs the Python package 'gevent', which is not installed: "
            'pip install "django-tasks-q[gevent]"') in done.stderr
