"""Django's task framework (the django-tasks package on Django 5.2) on ``TaskQBackend``, end to end.

Only the framework's public API is used to send and read (``task.enqueue``,
``get_result``, ``TaskResult.refresh``, ``aenqueue``, ``aget_result``); a real
``manage.py taskworker`` runs the tasks, on the embedded broker and on Redis.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from django_tasks import TaskResultStatus, task_backends
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist, TaskResultMismatch
from django_tasks.signals import task_enqueued

from django_tasks_q.backends import TaskQBackend, our_priority
from django_tasks_q.models import TaskResult as Row
from testproject.reports.tasks import framework_fail, nap_async, on_videos, summarise, with_context
from testproject.videos.tasks import add
from tests.integration.broker_tools import purge, queue_size
from tests.workers import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


def finished(result, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not result.is_finished:
        assert time.monotonic() < deadline, f"{result.task.name} still {result.status} after {timeout}s"
        time.sleep(0.1)
        result.refresh()
    return result


@pytest.fixture(params=["django", "redis"])
def broker_url(request, broker):
    url = "django://" if request.param == "django" else request.getfixturevalue("redis_url")
    broker(url)
    for name in ("default", "videos"):
        purge(url, name)
    return url


def test_the_framework_api_end_to_end(broker_url, tmp_path):
    signal_log = tmp_path / "signals.log"
    enqueued = []

    def record(sender, task_result, **kwargs):
        enqueued.append((sender, task_result.id))

    task_enqueued.connect(record)
    try:
        total = summarise.enqueue([1, 2, 3], scale=2)
        context = with_context.enqueue("hello")
        failing = framework_fail.enqueue("no such frame")
        napping = nap_async.enqueue(0.2)
        routed = on_videos.enqueue()
    finally:
        task_enqueued.disconnect(record)
    assert [task_id for _, task_id in enqueued] == [total.id, context.id, failing.id, napping.id, routed.id]
    assert all(sender is TaskQBackend for sender, _ in enqueued)
    waiting = summarise.get_result(total.id)  # known at once, before any worker ran
    assert waiting.status == TaskResultStatus.READY and waiting.args == [[1, 2, 3]] and waiting.kwargs == {"scale": 2}
    assert waiting.enqueued_at is not None and waiting.started_at is None and waiting.worker_ids == []

    with WorkerProcess(broker_url, "-P", "threads", "-c", "2", "-Q", "default,videos", "-n", "framework@%h",
                       env={"TESTPROJECT_SIGNAL_LOG": str(signal_log)}) as worker:
        assert finished(total).return_value == {"total": 12}
        assert total.status == TaskResultStatus.SUCCESSFUL and total.worker_ids[0].startswith("framework@")
        assert total.started_at <= total.finished_at and total.last_attempted_at == total.started_at
        assert finished(context).return_value == {"attempt": 1, "id": context.id, "note": "hello"}
        assert finished(napping).return_value == 0.2  # an async def task
        assert finished(routed).return_value == "videos"
        assert Row.objects.get(task_id=routed.id).queue == "videos"

        finished(failing)
        assert failing.status == TaskResultStatus.FAILED
        [error] = failing.errors
        assert error.exception_class_path == "builtins.LookupError" and error.exception_class is LookupError
        assert "no such frame" in error.traceback
        with pytest.raises(ValueError, match="Task failed"):
            failing.return_value
        assert "framework_fail" in worker.output()

    lines = signal_log.read_text().splitlines()
    for result, final in ((total, "SUCCESSFUL"), (failing, "FAILED"), (napping, "SUCCESSFUL")):
        assert f"TaskQBackend {result.id} RUNNING" in lines and f"TaskQBackend {result.id} {final}" in lines


def test_run_after_defers_the_task(broker_url):
    with WorkerProcess(broker_url, "-P", "solo", "-n", "deferred@%h"):
        run_after = timezone.now() + timedelta(seconds=2.5)
        deferred = summarise.using(run_after=run_after).enqueue([5])
        time.sleep(1)
        deferred.refresh()
        assert deferred.status == TaskResultStatus.READY  # received, waiting for its time
        assert finished(deferred).return_value == {"total": 5}
        assert deferred.started_at >= run_after


def test_bad_tasks_and_ids_are_refused_clearly(broker_url):
    with pytest.raises(InvalidTaskError, match="Queue 'reports' is not valid"):
        summarise.using(queue_name="reports").enqueue([1])
    with pytest.raises(InvalidTaskError, match="priority"):
        summarise.using(priority=101).enqueue([1])
    with pytest.raises(TaskResultDoesNotExist):
        summarise.get_result("no-such-result")
    ours = add.delay(1, 2)  # one of our own tasks: not a framework result
    Row.objects.create(task_id=ours.id, task_name=add.name, state="SUCCESS", result=3)
    with pytest.raises(TaskResultDoesNotExist, match="not a framework task"):
        summarise.get_result(ours.id)
    other = with_context.enqueue("x")
    with pytest.raises(TaskResultMismatch):
        summarise.get_result(other.id)


def test_a_stored_task_name_is_never_imported(monkeypatch):
    """Rows are also written from refused messages, so their task name is anyone's choice: reading the result
    must not import the module it names (``this`` prints the Zen of Python on import; any module may do worse)."""
    monkeypatch.delitem(sys.modules, "this", raising=False)
    Row.objects.create(task_id="forged-1", task_name="this.s", state="SUCCESS", result=1)
    with pytest.raises(TaskResultDoesNotExist, match="not a framework task"):
        task_backends["default"].get_result("forged-1")
    assert "this" not in sys.modules
    # what the backend registered is still found: the framework tasks of the apps' tasks modules
    registered = Row.objects.create(task_id="real-1", task_name=summarise.module_path, state="SUCCESS", result=6)
    assert task_backends["default"].get_result(registered.task_id).return_value == 6


@override_settings(TASKS={"default": {"BACKEND": "django_tasks_q.backends.TaskQBackend",
                                      "OPTIONS": {"ENQUEUE_ON_COMMIT": True}}})
def test_enqueue_on_commit_sends_only_what_commits(broker_url):
    with transaction.atomic():
        kept = summarise.enqueue([1])
        assert queue_size(broker_url, "default") == 0  # not before the commit
    assert queue_size(broker_url, "default") == 1 and summarise.get_result(kept.id).status == TaskResultStatus.READY
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = summarise.enqueue([2])
        raise RuntimeError("roll back")
    assert queue_size(broker_url, "default") == 1
    with pytest.raises(TaskResultDoesNotExist):
        summarise.get_result(dropped.id)


def test_async_enqueue_and_result(broker_url):
    async def send_and_read():
        result = await summarise.aenqueue([4, 4])
        return result, await summarise.aget_result(result.id)

    sent, read = asyncio.run(send_and_read())
    assert read.id == sent.id and read.status == TaskResultStatus.READY and read.args == [[4, 4]]


def test_priorities_map_onto_ours_and_options_are_checked():
    assert [our_priority(p) for p in (-100, -50, -1, 0, 1, 50, 100)] == [0, 2, 4, None, 5, 7, 9]
    backend = TaskQBackend("checked", {"OPTIONS": {"ENQUEUE_ON_COMIT": True}})
    [error] = backend.check()
    assert error.id == "django_tasks_q.E020" and "ENQUEUE_ON_COMIT" in error.msg
    assert list(task_backends["default"].check()) == []
