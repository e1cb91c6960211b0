"""``taskcall`` and ``taskpurge``, run as users run them (``manage.py`` subprocesses) on each broker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testproject.videos.tasks import add
from tests.workers import ROOT, WorkerProcess, worker_env

from .broker_tools import purge, queue_size

QUEUE = "purgeme"


def manage(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=worker_env(url),
                          input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def caller_worker(broker_url, django_db_blocker):
    with WorkerProcess(broker_url, "-Q", "default", "-P", "threads", "-c", "2", "-n", "called@%h") as worker:
        yield worker


def test_taskcall_sends_by_name_and_waits_for_the_result(caller_worker, use_broker):
    ok = manage(use_broker, "taskcall", "testproject.videos.tasks.add", "--args", "[2, 3]", "--wait")
    assert ok.returncode == 0, ok.stderr
    task_id, value = ok.stdout.split()
    assert value == "5" and len(task_id) == 36

    failed = manage(use_broker, "taskcall", "testproject.videos.tasks.fail", "--kwargs", '{"message": "bad"}',
                    "--wait")
    assert failed.returncode == 1 and "ended FAILURE: ValueError: bad" in failed.stderr

    broken = manage(use_broker, "taskcall", "testproject.videos.tasks.add", "--args", "[2,")
    assert broken.returncode == 1 and "--args is not valid JSON" in broken.stderr


def test_taskpurge_asks_then_empties_the_named_queues(use_broker):
    purge(use_broker, QUEUE)
    for n in range(3):
        add.apply_async((n, n), queue=QUEUE)
    assert queue_size(use_broker, QUEUE) == 3

    declined = manage(use_broker, "taskpurge", "-Q", QUEUE, stdin="no\n")
    assert declined.returncode == 1 and "nothing purged" in declined.stderr
    assert queue_size(use_broker, QUEUE) == 3  # nothing lost on "no"

    done = manage(use_broker, "taskpurge", "-Q", QUEUE, "--force")
    assert done.returncode == 0, done.stderr
    assert f"purged 3 messages from {QUEUE}" in done.stdout
    assert queue_size(use_broker, QUEUE) == 0
