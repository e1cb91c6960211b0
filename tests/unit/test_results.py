"""The ORM result backend and ``AsyncResult`` (docs/results.md)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from django_tasks_q import AsyncResult
from django_tasks_q.core.context import Request
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import ImproperlyConfigured, TaskError, TimeoutError
from django_tasks_q.models import TaskResult
from django_tasks_q.results.backend import DisabledBackend, describe_exception, get_backend, rebuild_exception
from django_tasks_q.results.database import DatabaseBackend

pytestmark = pytest.mark.django_db

NAME = "testproject.videos.tasks.add"


@pytest.fixture
def backend():
    backend = get_backend()
    assert isinstance(backend, DatabaseBackend)
    return backend


def request_for(task_id: str, **extra) -> Request:
    values = dict(id=task_id, task=NAME, args=(2, 3), kwargs={"k": 1}, hostname="w1@host",
                  delivery_info={"queue": "videos"}, retries=0, parent_id="p", root_id="r")
    values.update(extra)
    return Request(**values)


def test_received_started_success_is_one_row_with_every_date(backend):
    request = request_for("t-1")
    backend.mark("t-1", TaskState.RECEIVED, request=request, task_name=NAME)
    backend.mark("t-1", TaskState.STARTED, request=request, task_name=NAME)
    backend.mark("t-1", TaskState.SUCCESS, result=5, request=request, task_name=NAME, runtime=0.25)

    rows = list(TaskResult.objects.filter(task_id="t-1"))
    assert len(rows) == 1
    row = rows[0]
    assert row.state == TaskState.SUCCESS
    assert row.result == 5
    assert row.date_received is not None
    assert row.date_started is not None
    assert row.date_done is not None
    assert row.date_received <= row.date_started <= row.date_done
    assert row.runtime == 0.25
    assert (row.task_name, row.worker, row.queue) == (NAME, "w1@host", "videos")
    assert (row.args, row.kwargs) == ([2, 3], {"k": 1})
    assert (row.parent_id, row.root_id) == ("p", "r")


def test_later_states_do_not_erase_earlier_dates(backend):
    backend.mark("t-2", TaskState.RECEIVED, request=request_for("t-2"))
    received = TaskResult.objects.get(task_id="t-2").date_received
    backend.mark("t-2", TaskState.STARTED, request=request_for("t-2"))
    backend.mark("t-2", TaskState.FAILURE, result=describe_exception(ValueError("x")), request=request_for("t-2"))
    row = TaskResult.objects.get(task_id="t-2")
    assert row.date_received == received
    assert row.date_started is not None and row.date_done is not None


def test_success_through_async_result(backend):
    backend.mark("t-3", TaskState.SUCCESS, result={"rows": 7}, task_name=NAME)
    result = AsyncResult("t-3")
    assert result.state == TaskState.SUCCESS
    assert result.status == TaskState.SUCCESS
    assert result.ready() is True
    assert result.successful() is True
    assert result.failed() is False
    assert result.result == {"rows": 7}
    assert result.info == {"rows": 7}
    assert result.get(timeout=1) == {"rows": 7}
    assert result.date_done is not None
    assert result.traceback is None


def test_unknown_id_is_pending(backend):
    result = AsyncResult("never-sent")
    assert result.state == TaskState.PENDING
    assert not result.ready() and not result.successful() and not result.failed()
    assert result.result is None
    assert result.date_done is None


def test_failure_reraises_the_same_type(backend):
    backend.mark("t-4", TaskState.FAILURE, result=describe_exception(ValueError("bad input", 42)),
                 traceback="Traceback ...\nValueError: bad input", task_name=NAME)
    row = TaskResult.objects.get(task_id="t-4")
    assert row.result == {"exc_type": "ValueError", "exc_message": ["bad input", 42], "exc_module": "builtins"}

    result = AsyncResult("t-4")
    assert result.state == TaskState.FAILURE
    assert result.failed() and result.ready() and not result.successful()
    with pytest.raises(ValueError) as excinfo:
        result.get()
    assert excinfo.value.args == ("bad input", 42)
    assert isinstance(result.result, ValueError)
    assert result.traceback.endswith("ValueError: bad input")


def test_failure_of_a_package_exception_type(backend):
    from django_tasks_q.exceptions import EncodeError

    backend.mark("t-4b", TaskState.FAILURE, result=describe_exception(EncodeError("nope")))
    with pytest.raises(EncodeError, match="nope"):
        AsyncResult("t-4b").get()


def test_get_propagate_false_returns_the_exception(backend):
    backend.mark("t-5", TaskState.FAILURE, result=describe_exception(KeyError("k")))
    exc = AsyncResult("t-5").get(propagate=False)
    assert isinstance(exc, KeyError)
    assert exc.args == ("k",)


def test_unimportable_exception_type_becomes_task_error(backend):
    backend.mark("t-6", TaskState.FAILURE,
                 result={"exc_type": "FancyError", "exc_message": ["it broke"], "exc_module": "no.such.module"})
    with pytest.raises(TaskError) as excinfo:
        AsyncResult("t-6").get()
    assert "no.such.module.FancyError" in str(excinfo.value)
    assert "it broke" in str(excinfo.value)


@pytest.mark.parametrize("description", [
    {"exc_type": "UnicodeDecodeError", "exc_message": ["one arg"], "exc_module": "builtins"},  # needs 5 args
    {"exc_type": "path", "exc_message": ["x"], "exc_module": "os"},  # not an exception class
    {"exc_type": "NoSuchName", "exc_message": [], "exc_module": "builtins"},
    "just a string",
    None,
])
def test_rebuild_falls_back_to_task_error(description):
    assert isinstance(rebuild_exception(description), TaskError)


def test_describe_exception_with_unjsonable_args():
    description = describe_exception(ValueError(object()))
    assert description["exc_type"] == "ValueError"
    assert len(description["exc_message"]) == 1 and isinstance(description["exc_message"][0], str)


def test_get_timeout_on_pending_raises_our_timeout_error(backend):
    started = time.monotonic()
    with pytest.raises(TimeoutError) as excinfo:
        AsyncResult("pending-id").get(timeout=0.2)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0
    assert "pending-id" in str(excinfo.value)
    assert "PENDING" in str(excinfo.value)


def test_get_does_not_spin_on_the_database(backend, monkeypatch):
    calls = []
    original = backend.meta

    def counting_meta(task_id):
        calls.append(task_id)
        return original(task_id)

    monkeypatch.setattr(backend, "meta", counting_meta)
    with pytest.raises(TimeoutError):
        AsyncResult("pending-id", backend=backend).get(timeout=0.5, interval=0.1)
    assert 3 <= len(calls) <= 15  # back-off up to `interval`, not a busy loop


def test_get_on_a_started_task_times_out_naming_the_state(backend):
    backend.mark("t-7", TaskState.STARTED, request=request_for("t-7"))
    with pytest.raises(TimeoutError, match="STARTED"):
        AsyncResult("t-7").get(timeout=0.05)


def test_ready_result_is_cached(backend, django_assert_num_queries):
    backend.mark("t-8", TaskState.SUCCESS, result=1)
    result = AsyncResult("t-8")
    assert result.get() == 1
    with django_assert_num_queries(0):
        assert result.state == TaskState.SUCCESS
        assert result.get() == 1


def test_forget_deletes_the_row(backend):
    backend.mark("t-9", TaskState.SUCCESS, result=1)
    result = AsyncResult("t-9")
    assert result.get() == 1
    result.forget()
    assert not TaskResult.objects.filter(task_id="t-9").exists()
    assert result.state == TaskState.PENDING


def test_progress_via_update_state(backend):
    from testproject.videos.tasks import compress

    compress.update_state(state="PROGRESS", meta={"current": 3, "total": 10}, task_id="t-10")
    result = AsyncResult("t-10")
    assert result.state == "PROGRESS"
    assert result.info == {"current": 3, "total": 10}
    assert not result.ready()
    assert TaskResult.objects.get(task_id="t-10").task_name == "testproject.videos.tasks.compress"

    compress.update_state(state="PROGRESS", meta={"current": 9, "total": 10}, task_id="t-10")
    assert result.info == {"current": 9, "total": 10}  # not cached while unfinished
    assert TaskResult.objects.filter(task_id="t-10").count() == 1


def test_retry_state_info_is_the_exception(backend):
    backend.mark("t-11", TaskState.RETRY, result=describe_exception(ConnectionError("flaky")))
    result = AsyncResult("t-11")
    assert not result.ready()
    assert isinstance(result.info, ConnectionError)


def test_cleanup_deletes_only_finished_old_rows(backend):
    now = timezone.now()
    for task_id, state in [("old-ok", TaskState.SUCCESS), ("old-fail", TaskState.FAILURE),
                           ("old-revoked", TaskState.REVOKED), ("new-ok", TaskState.SUCCESS)]:
        backend.mark(task_id, state, result=None)
    backend.mark("old-started", TaskState.STARTED, request=request_for("old-started"))
    backend.mark("old-progress", "PROGRESS", result={"current": 1})
    TaskResult.objects.filter(task_id__startswith="old-").update(date_done=now - timedelta(days=2))

    deleted = backend.cleanup(now - timedelta(days=1))

    assert deleted == 3
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {"new-ok", "old-started", "old-progress"}


def test_disabled_backend():
    with override_settings(TASKS_Q={"RESULT_BACKEND": None}):
        backend = get_backend()
        assert isinstance(backend, DisabledBackend)
        backend.mark("t-12", TaskState.SUCCESS, result=1)
        assert not TaskResult.objects.filter(task_id="t-12").exists()
        result = AsyncResult("t-12")
        assert result.state == TaskState.PENDING
        assert not result.ready()
        with pytest.raises(ImproperlyConfigured, match="RESULT_BACKEND is None"):
            result.get(timeout=0.1)
        assert backend.cleanup(timezone.now()) == 0
    assert isinstance(get_backend(), DatabaseBackend)  # back after the override


def test_unsupported_backend_is_a_clear_error():
    with override_settings(TASKS_Q={"RESULT_BACKEND": "mongodb://x"}):
        with pytest.raises(ImproperlyConfigured, match="mongodb://x"):
            get_backend()


def test_async_result_identity():
    assert AsyncResult("a") == AsyncResult("a")
    assert AsyncResult("a") != AsyncResult("b")
    assert len({AsyncResult("a"), AsyncResult("a")}) == 1
    assert repr(AsyncResult("a")) == "<AsyncResult: a>"
    from testproject.videos.tasks import add

    bound = add.AsyncResult("x")
    assert (bound.id, bound.task_name) == ("x", NAME)


def test_a_stored_exception_never_makes_the_reader_import_its_module():
    import sys

    from django_tasks_q.exceptions import TaskError
    from django_tasks_q.results.backend import rebuild_exception

    assert "wave" not in sys.modules  # a stdlib module nothing here imports; wave.Error exists
    rebuilt = rebuild_exception({"exc_type": "Error", "exc_module": "wave", "exc_message": ["x"]})
    assert isinstance(rebuilt, TaskError) and "wave.Error: x" in str(rebuilt)
    assert "wave" not in sys.modules
    assert isinstance(rebuild_exception({"exc_type": "KeyError", "exc_module": "builtins", "exc_message": ["k"]}),
                      KeyError)
