"""``worker.timelimits``: soft time limits and terminate, raised inside the running task.

The main-thread path (SIGALRM) is what the solo pool and prefork children
use; the other-thread path (``PyThreadState_SetAsyncExc``) is the threads
pool's. Both are driven here directly, then through ``execute()``.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from django_tasks_q import Task, signals, task
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import SoftTimeLimitExceeded, TaskRevokedError
from django_tasks_q.models import TaskResult
from django_tasks_q.worker import timelimits
from django_tasks_q.worker.executor import backoff_countdown, execute
from django_tasks_q.worker.timelimits import Guard

pytestmark = pytest.mark.django_db(transaction=True)


def _in_thread(fn):
    """Run ``fn`` in a new thread; return what it returned or raised."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return box


def _naps(total: float, chunk: float = 0.01) -> None:
    deadline = time.monotonic() + total
    while time.monotonic() < deadline:
        time.sleep(chunk)


def _terminate_when_running(task_id: str, signum: int = signal.SIGTERM) -> threading.Thread:
    def stop():
        deadline = time.monotonic() + 10
        while not timelimits.running(task_id) and time.monotonic() < deadline:
            time.sleep(0.01)
        timelimits.terminate(task_id, signum)

    thread = threading.Thread(target=stop)
    thread.start()
    return thread


def test_soft_limit_interrupts_a_blocking_call_in_the_main_thread():
    assert threading.current_thread() is threading.main_thread()
    with pytest.raises(SoftTimeLimitExceeded, match=r"soft time limit \(0.2s\) exceeded"):
        with Guard("soft-main", 0.2):
            time.sleep(20)  # one blocking call: SIGALRM interrupts it
    timelimits.discard("soft-main")
    time.sleep(0.3)  # the timer is disarmed: nothing arrives after the guard closed


def test_soft_limit_reaches_another_thread_at_its_next_bytecode():
    def body():
        with Guard("soft-thread", 0.2):
            _naps(20)

    box = _in_thread(body)
    assert isinstance(box.get("error"), SoftTimeLimitExceeded)
    assert str(box["error"]) == "soft time limit (0.2s) exceeded"  # the message is added on the way out
    timelimits.discard("soft-thread")


@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_finished_body_is_never_hit_by_its_timer(where):
    def body():
        with Guard(f"quick-{where}", 0.05):
            pass
        _naps(0.2)  # well past the limit, outside the guard
        return "done"

    if where == "main":
        assert body() == "done"
    else:
        assert _in_thread(body) == {"value": "done"}
    timelimits.discard(f"quick-{where}")


def test_terminate_interrupts_a_blocking_call_in_the_main_thread():
    stopper = _terminate_when_running("term-main")
    guard = Guard("term-main", None)
    with pytest.raises(TaskRevokedError, match="terminated") as excinfo:
        with guard:
            time.sleep(20)
    stopper.join()
    assert guard.terminated(excinfo.value) and guard.signum == signal.SIGTERM
    timelimits.discard("term-main")


def test_terminate_reaches_a_task_thread():
    guard = Guard("term-thread", None)

    def body():
        with guard:
            _naps(20)

    stopper = _terminate_when_running("term-thread", signal.SIGKILL)
    box = _in_thread(body)
    stopper.join()
    assert isinstance(box.get("error"), TaskRevokedError) and str(box["error"]) == "terminated"
    assert guard.terminated(box["error"]) and guard.signum == signal.SIGKILL
    timelimits.discard("term-thread")


def test_terminate_before_the_guard_opens_stops_it_at_the_door():
    assert timelimits.terminate("early", signal.SIGTERM) is True
    guard = Guard("early", None)
    with pytest.raises(TaskRevokedError):
        with guard:
            pytest.fail("the body must not run")
    assert guard.terminated(TaskRevokedError("terminated"))


def test_terminate_after_the_body_finished_is_refused():
    with Guard("done-already", None):
        pass
    assert timelimits.terminate("done-already") is False
    timelimits.discard("done-already")
    assert not timelimits.running("done-already")


def test_a_task_raising_task_revoked_error_itself_is_not_terminated():
    guard = Guard("self-raised", None)
    with pytest.raises(TaskRevokedError):
        with guard:
            raise TaskRevokedError("from the task")
    assert not guard.terminated(TaskRevokedError("from the task"))
    timelimits.discard("self-raised")


def test_a_non_interruptible_guard_does_nothing():
    with Guard("eager", 0.01, interruptible=False):
        _naps(0.1)
    assert not timelimits.running("eager")


def test_hard_limit_warning_is_logged_once_per_task(caplog):
    for _ in range(3):
        timelimits.warn_hard_limit_unenforced("threads", "unit.hard", 5)
    timelimits.warn_hard_limit_unenforced("threads", "unit.other", None)
    warnings = [r for r in caplog.records if "cannot enforce" in r.getMessage()]
    assert len(warnings) == 1 and "unit.hard" in warnings[0].getMessage()


# -- through execute() ---------------------------------------------------

DELIVERY = {"queue": "default"}


def test_soft_limit_is_a_failure_with_soft_time_limit_exceeded(clean_registry):
    @task(name="unit.slow")
    def slow():
        time.sleep(20)

    message = TaskMessage(id="tl-soft", task="unit.slow", soft_time_limit=0.2)
    outcome = execute(message, DELIVERY, "unit@host")
    assert outcome.state == TaskState.FAILURE
    row = TaskResult.objects.get(task_id="tl-soft")
    assert row.result["exc_type"] == "SoftTimeLimitExceeded"
    assert row.result["exc_message"] == ["soft time limit (0.2s) exceeded"]


def test_terminated_task_is_revoked_without_failure_hooks(clean_registry):
    calls = []

    class Hooks(Task):
        def on_failure(self, *args):
            calls.append("on_failure")

        def after_return(self, status, *args):
            calls.append(f"after_return {status}")

    @task(name="unit.spin", base=Hooks)
    def spin():
        _naps(20)

    revoked = []

    def receiver(sender, **kwargs):
        revoked.append(kwargs)

    signals.task_revoked.connect(receiver, weak=False)
    try:
        message = TaskMessage(id="tl-term", task="unit.spin")
        stopper = _terminate_when_running("tl-term", signal.SIGTERM)
        box = _in_thread(lambda: execute(message, DELIVERY, "unit@host"))
        stopper.join()
    finally:
        signals.task_revoked.disconnect(receiver)
    timelimits.discard("tl-term")
    assert box["value"].state == TaskState.REVOKED and not box["value"].requeue
    row = TaskResult.objects.get(task_id="tl-term")
    assert row.state == TaskState.REVOKED
    assert row.result == {"exc_type": "TaskRevokedError", "exc_message": ["terminated"],
                          "exc_module": "django_tasks_q.exceptions"}
    assert calls == ["after_return REVOKED"]  # no on_failure for a revoked task (as Celery)
    (sent,) = revoked
    assert sent["terminated"] is True and sent["signum"] == signal.SIGTERM and sent["request"].id == "tl-term"


# -- retry back-off ------------------------------------------------------

@pytest.mark.parametrize("backoff, retries, expected", [
    (True, 0, 1), (True, 3, 8), (2, 2, 8), (0.5, 1, 1.0), (True, 20, 600), (2, 10, 600),
])
def test_backoff_is_exponential_and_capped(clean_registry, backoff, retries, expected):
    @task(name="unit.backoff", retry_backoff=backoff, retry_jitter=False)
    def probe():
        pass

    assert backoff_countdown(probe, retries) == expected


def test_backoff_jitter_is_random_between_zero_and_the_cap(clean_registry):
    @task(name="unit.jitter", retry_backoff=True, retry_backoff_max=4)
    def probe():
        pass

    draws = [backoff_countdown(probe, 5) for _ in range(200)]
    assert all(0 <= d <= 4 for d in draws)
    assert len(set(draws)) > 100  # full jitter, not a fixed value


def test_no_backoff_means_default_retry_delay(clean_registry):
    @task(name="unit.plain")
    def probe():
        pass

    assert backoff_countdown(probe, 3) is None
