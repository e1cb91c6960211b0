"""ALWAYS_EAGER and ``task.apply()``: tasks run inline and return an ``EagerResult``."""

from __future__ import annotations

import pytest

from django_tasks_q import EagerResult, task
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import InvalidTaskOptions, MaxRetriesExceededError
from testproject.videos.tasks import add, fail, flaky, whoami


@pytest.fixture
def no_broker(monkeypatch):
    """Eager mode must not publish anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("eager mode published a message")

    monkeypatch.setattr("django_tasks_q.core.calling.publish", refuse)


@pytest.fixture
def propagate(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "ALWAYS_EAGER": True, "EAGER_PROPAGATES": True}


def test_delay_runs_inline_and_succeeds(eager, no_broker):
    result = add.delay(2, 3)
    assert isinstance(result, EagerResult)
    assert result.state == TaskState.SUCCESS
    assert result.ready() and result.successful() and not result.failed()
    assert result.get() == 5
    assert result.result == 5
    assert result.task_name == "testproject.videos.tasks.add"


def test_apply_async_keeps_the_given_task_id(eager, no_broker):
    result = add.apply_async((1, 1), task_id="fixed-id", queue="videos")
    assert result.id == "fixed-id"
    assert result.get() == 2


def test_eager_request_knows_its_id(eager, no_broker):
    result = whoami.delay()
    assert result.get()["id"] == result.id
    assert result.get()["retries"] == 0


def test_call_options_are_still_validated_in_eager_mode(eager, no_broker):
    with pytest.raises(InvalidTaskOptions, match="countdwn"):
        add.apply_async((1, 2), countdwn=3)


def test_failing_task(eager, no_broker):
    result = fail.delay("eager boom")
    assert result.state == TaskState.FAILURE
    assert result.failed() and result.ready() and not result.successful()
    with pytest.raises(ValueError, match="eager boom"):
        result.get()
    exc = result.get(propagate=False)
    assert isinstance(exc, ValueError) and str(exc) == "eager boom"
    assert result.result is exc
    assert "ValueError: eager boom" in result.traceback


def test_eager_propagates_raises_at_delay(propagate, no_broker):
    with pytest.raises(ValueError, match="straight out"):
        fail.delay("straight out")


def test_wrong_arity_is_a_type_error_naming_the_task(eager, no_broker):
    result = add.delay(1)
    assert result.state == TaskState.FAILURE
    with pytest.raises(TypeError) as excinfo:
        result.get()
    assert "testproject.videos.tasks.add" in str(excinfo.value)
    assert "'y'" in str(excinfo.value)  # the missing argument


def test_wrong_keyword_is_a_type_error_naming_the_task(propagate, no_broker):
    with pytest.raises(TypeError, match=r"testproject\.videos\.tasks\.add.*'z'"):
        add.delay(1, 2, z=3)


def test_type_error_raised_inside_the_task_is_kept_as_is(eager, no_broker):
    result = add.delay("a", 1)  # the arguments bind; the addition fails
    with pytest.raises(TypeError) as excinfo:
        result.get()
    assert "wrong arguments" not in str(excinfo.value)
    assert "str" in str(excinfo.value)


def test_retry_runs_again_inline(eager, no_broker):
    result = flaky.delay(succeed_on_attempt=2)
    assert result.state == TaskState.SUCCESS
    assert result.get() == 1  # request.retries on the attempt that succeeded
    assert flaky.delay(succeed_on_attempt=3).get() == 2  # max_retries=2 allows two retries


def test_retry_past_max_retries_fails_chained_to_the_cause(eager, no_broker):
    result = flaky.delay(succeed_on_attempt=5)
    assert result.state == TaskState.FAILURE
    with pytest.raises(MaxRetriesExceededError) as excinfo:
        result.get()
    assert isinstance(excinfo.value.__cause__, ConnectionError)
    assert "attempt 3 failed" in str(excinfo.value.__cause__)
    assert "2 retries" in str(excinfo.value)


def test_retry_with_new_args_runs_again_with_them(eager, no_broker, clean_registry):
    @task(bind=True, max_retries=5)
    def count_up(self, x):
        if x < 3:
            raise self.retry(args=(x + 1,), countdown=0)
        return x

    assert count_up.delay(0).get() == 3


def test_autoretry_for_retries_inline(eager, no_broker, clean_registry):
    attempts = []

    @task(bind=True, autoretry_for=(KeyError,), max_retries=3, retry_backoff=True, retry_backoff_max=0)
    def lookup(self, succeed_on):
        attempts.append(self.request.retries)
        if len(attempts) < succeed_on:
            raise KeyError("missing")
        return "found"

    assert lookup.delay(3).get() == "found"
    assert attempts == [0, 1, 2]

    attempts.clear()
    result = lookup.delay(10)
    assert attempts == [0, 1, 2, 3]
    with pytest.raises(MaxRetriesExceededError) as excinfo:
        result.get()
    assert isinstance(excinfo.value.__cause__, KeyError)


def test_exceptions_not_in_autoretry_for_fail_at_once(eager, no_broker, clean_registry):
    attempts = []

    @task(autoretry_for=(KeyError,), dont_autoretry_for=(LookupError,))
    def picky(exc_type):
        attempts.append(1)
        raise exc_type("no")

    with pytest.raises(ValueError):
        picky.delay(ValueError).get()
    with pytest.raises(KeyError):
        picky.delay(KeyError).get()  # excluded by dont_autoretry_for (KeyError is a LookupError)
    assert len(attempts) == 2


def test_apply_runs_inline_without_eager_mode(no_broker):
    result = add.apply((2, 3))
    assert isinstance(result, EagerResult)
    assert result.get() == 5
    assert result.state == TaskState.SUCCESS
    failed = fail.apply(kwargs={"message": "applied"})
    assert failed.state == TaskState.FAILURE
    with pytest.raises(ValueError, match="applied"):
        failed.get()


def test_apply_with_task_id():
    assert add.apply((1, 2), task_id="apply-id").id == "apply-id"


def test_eager_result_forget_is_harmless(eager, no_broker):
    result = add.delay(1, 2)
    result.forget()
    assert result.get() == 3


def test_delay_on_commit_runs_only_after_commit(eager, no_broker, db, django_capture_on_commit_callbacks,
                                                clean_registry):
    ran = []

    @task
    def remember(x):
        ran.append(x)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert remember.delay_on_commit(7) is None
        assert ran == []
    assert callbacks  # registered, not run: the call's own callback and its batch's send (core/commit_batch.py)
    for callback in callbacks:
        callback()
    assert ran == [7]


def test_hooks_run_in_eager_mode(eager, no_broker, clean_registry):
    from django_tasks_q import Task

    calls = []

    class Recording(Task):
        def on_success(self, retval, task_id, args, kwargs):
            calls.append(("on_success", retval))

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            calls.append(("after_return", status))

    @task(base=Recording)
    def recorded():
        return 7

    recorded.delay()
    assert calls == [("on_success", 7), ("after_return", TaskState.SUCCESS)]


def test_eager_update_state_leaves_no_orphan_row(eager, no_broker, db):
    from django_tasks_q.models import TaskResult
    from testproject.videos.tasks import compress

    result = compress.delay(1, steps=2)
    assert result.get()["compressed"] is True
    assert not TaskResult.objects.filter(state="PROGRESS").exists()
