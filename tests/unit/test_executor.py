"""``worker.executor.execute``: one task run, its stored outcome, hooks and signals."""

from __future__ import annotations

import json

import pytest

from django_tasks_q import AsyncResult, Task, signals, task
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import EncodeError, MaxRetriesExceededError
from django_tasks_q.models import TaskResult
from django_tasks_q.results.database import DatabaseBackend
from django_tasks_q.worker.executor import execute

# execute() closes a connection it finds inside a transaction (a task left it
# there), so these tests cannot run inside the `db` fixture's atomic block.
pytestmark = pytest.mark.django_db(transaction=True)

DELIVERY = {"queue": "videos", "routing_key": "videos", "exchange": "videos"}
HOST = "unit@host"


def run(name: str, *args, task_id: str = "exec-1", **kwargs):
    message = TaskMessage(id=task_id, task=name, args=args, kwargs=kwargs)
    return execute(message, DELIVERY, HOST)


@pytest.fixture
def published(monkeypatch):
    """Messages that retries and links send, captured instead of published."""
    sent = []

    def capture(encoded, route, *, task_id, reply_to=None, **more):
        sent.append((encoded, route))

    monkeypatch.setattr("django_tasks_q.core.calling.publish", capture)
    return sent


@pytest.fixture
def received_signals():
    seen: dict[str, list[dict]] = {}
    receivers = {}
    for name in ("task_prerun", "task_postrun", "task_success", "task_failure", "task_retry"):
        def receiver(sender, _name=name, **kwargs):
            seen.setdefault(_name, []).append({"sender": sender, **kwargs})
        receivers[name] = receiver
        getattr(signals, name).connect(receiver, weak=False)
    yield seen
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def test_success_is_stored():
    outcome = run("testproject.videos.tasks.add", 2, 3)
    assert outcome.state == TaskState.SUCCESS
    assert outcome.requeue is False
    assert outcome.runtime >= 0
    row = TaskResult.objects.get(task_id="exec-1")
    assert (row.state, row.result) == (TaskState.SUCCESS, 5)
    assert (row.worker, row.queue, row.task_name) == (HOST, "videos", "testproject.videos.tasks.add")
    assert row.args == [2, 3]
    assert row.date_started is not None and row.date_done is not None and row.runtime is not None
    assert AsyncResult("exec-1").get(timeout=1) == 5


def test_track_started_off_skips_started(monkeypatch, settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "TRACK_STARTED": False}
    states = []
    original = DatabaseBackend.mark

    def spy(self, task_id, state, **kwargs):
        states.append(state)
        return original(self, task_id, state, **kwargs)

    monkeypatch.setattr(DatabaseBackend, "mark", spy)
    execute(TaskMessage(id="exec-ts", task="testproject.videos.tasks.add", args=(1, 1)), DELIVERY, HOST)
    assert states == [TaskState.SUCCESS]
    assert TaskResult.objects.get(task_id="exec-ts").date_started is None


def test_bound_task_sees_its_request():
    run("testproject.videos.tasks.whoami", task_id="exec-who")
    assert AsyncResult("exec-who").get() == {"id": "exec-who", "retries": 0, "queue": "videos",
                                             "hostname": HOST, "eta": None}


def test_wrong_arity_is_a_failure_naming_the_task():
    outcome = run("testproject.videos.tasks.add", 1)
    assert outcome.state == TaskState.FAILURE
    row = TaskResult.objects.get(task_id="exec-1")
    assert row.state == TaskState.FAILURE
    assert row.result["exc_type"] == "TypeError"
    with pytest.raises(TypeError) as excinfo:
        AsyncResult("exec-1").get()
    assert "testproject.videos.tasks.add" in str(excinfo.value)
    assert "TypeError" in row.traceback


def test_exception_is_a_failure_with_the_same_type():
    outcome = run("testproject.videos.tasks.fail", "worker boom")
    assert outcome.state == TaskState.FAILURE
    with pytest.raises(ValueError, match="worker boom"):
        AsyncResult("exec-1").get()
    assert "raise ValueError(message)" in TaskResult.objects.get(task_id="exec-1").traceback


def test_unserialisable_return_value_is_a_failure_not_a_crash():
    outcome = run("testproject.videos.tasks.unjsonable")
    assert outcome.state == TaskState.FAILURE
    row = TaskResult.objects.get(task_id="exec-1")
    assert row.state == TaskState.FAILURE
    assert row.result["exc_type"] == "EncodeError"
    with pytest.raises(EncodeError) as excinfo:
        AsyncResult("exec-1").get()
    assert "testproject.videos.tasks.unjsonable" in str(excinfo.value)
    assert "object" in str(excinfo.value)


def test_a_raising_hook_does_not_change_the_outcome(clean_registry, received_signals):
    class Grumpy(Task):
        def on_success(self, retval, task_id, args, kwargs):
            raise RuntimeError("hook broke")

        def after_return(self, *args):
            raise RuntimeError("after_return broke")

    @task(base=Grumpy, name="unit.grumpy")
    def grumpy(x):
        return x + 1

    outcome = run("unit.grumpy", 1)
    assert outcome.state == TaskState.SUCCESS
    assert AsyncResult("exec-1").get() == 2
    assert len(received_signals["task_postrun"]) == 1  # still sent after the broken after_return


def test_a_raising_failure_hook_keeps_the_failure(clean_registry):
    class Grumpy(Task):
        def on_failure(self, exc, task_id, args, kwargs, einfo):
            raise RuntimeError("hook broke")

    @task(base=Grumpy, name="unit.grumpy_fail")
    def grumpy_fail():
        raise KeyError("original")

    assert run("unit.grumpy_fail").state == TaskState.FAILURE
    with pytest.raises(KeyError):
        AsyncResult("exec-1").get()


def test_a_raising_signal_receiver_does_not_change_the_outcome():
    def broken(sender, **kwargs):
        raise RuntimeError("receiver broke")

    signals.task_prerun.connect(broken, weak=False)
    signals.task_success.connect(broken, weak=False)
    try:
        assert run("testproject.videos.tasks.add", 1, 2).state == TaskState.SUCCESS
    finally:
        signals.task_prerun.disconnect(broken)
        signals.task_success.disconnect(broken)
    assert AsyncResult("exec-1").get() == 3


def test_hooks_are_called_with_the_outcome(clean_registry):
    calls = []

    class Recording(Task):
        def on_success(self, retval, task_id, args, kwargs):
            calls.append(("on_success", retval, task_id, args, kwargs))

        def on_failure(self, exc, task_id, args, kwargs, einfo):
            calls.append(("on_failure", type(exc).__name__, task_id, args, kwargs, "Traceback" in einfo))

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            calls.append(("after_return", status, task_id))

    @task(base=Recording, name="unit.recording")
    def recording(x, negative=False):
        if negative:
            raise ValueError(x)
        return x

    run("unit.recording", 4, task_id="ok")
    run("unit.recording", 4, task_id="bad", negative=True)
    assert calls == [
        ("on_success", 4, "ok", (4,), {}),
        ("after_return", TaskState.SUCCESS, "ok"),
        ("on_failure", "ValueError", "bad", (4,), {"negative": True}, True),
        ("after_return", TaskState.FAILURE, "bad"),
    ]


def test_request_is_still_set_in_after_return_and_postrun(clean_registry):
    # As in Celery: after_return and task_postrun receivers may read self.request.
    seen = []

    class Auditing(Task):
        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            seen.append(("after_return", self.request.id, self.request.hostname))

    @task(base=Auditing, name="unit.auditing")
    def auditing():
        return 1

    def on_postrun(sender, **kwargs):
        seen.append(("postrun", sender.request.id, sender.request.hostname))

    signals.task_postrun.connect(on_postrun, weak=False)
    try:
        run("unit.auditing", task_id="exec-a")
    finally:
        signals.task_postrun.disconnect(on_postrun)
    assert seen == [("after_return", "exec-a", HOST), ("postrun", "exec-a", HOST)]
    from django_tasks_q.core import context
    assert context.current().id is None  # popped afterwards


def test_progress_then_success(monkeypatch):
    states = []
    original = DatabaseBackend.mark

    def spy(self, task_id, state, **kwargs):
        states.append((state, kwargs.get("result")))
        return original(self, task_id, state, **kwargs)

    monkeypatch.setattr(DatabaseBackend, "mark", spy)
    outcome = run("testproject.videos.tasks.compress", 7, steps=3, task_id="exec-p")

    assert outcome.state == TaskState.SUCCESS
    assert [state for state, _ in states] == [TaskState.STARTED, "PROGRESS", "PROGRESS", "PROGRESS",
                                              TaskState.SUCCESS]
    assert [meta for state, meta in states if state == "PROGRESS"] == [
        {"current": 1, "total": 3}, {"current": 2, "total": 3}, {"current": 3, "total": 3}]
    assert AsyncResult("exec-p").get() == {"video_id": 7, "compressed": True, "worker": HOST}
    assert TaskResult.objects.filter(task_id="exec-p").count() == 1


def test_signals_on_success(received_signals):
    from testproject.videos.tasks import add

    run("testproject.videos.tasks.add", 2, 3)
    prerun, = received_signals["task_prerun"]
    assert prerun["sender"] is add and prerun["task"] is add
    assert (prerun["task_id"], prerun["args"], prerun["kwargs"]) == ("exec-1", (2, 3), {})
    success, = received_signals["task_success"]
    assert success["sender"] is add and success["result"] == 5
    postrun, = received_signals["task_postrun"]
    assert (postrun["task_id"], postrun["retval"], postrun["state"]) == ("exec-1", 5, TaskState.SUCCESS)
    assert "task_failure" not in received_signals


def test_signals_on_failure(received_signals):
    run("testproject.videos.tasks.fail", "sig")
    failure, = received_signals["task_failure"]
    assert failure["task_id"] == "exec-1"
    assert isinstance(failure["exception"], ValueError)
    assert "Traceback" in failure["traceback"]
    postrun, = received_signals["task_postrun"]
    assert postrun["state"] == TaskState.FAILURE
    assert isinstance(postrun["retval"], ValueError)
    assert "task_success" not in received_signals


def test_ignore_result_stores_nothing():
    message = TaskMessage(id="exec-ign", task="testproject.videos.tasks.add", args=(1, 2), ignore_result=True)
    assert execute(message, DELIVERY, HOST).state == TaskState.SUCCESS
    assert not TaskResult.objects.filter(task_id="exec-ign").exists()


def test_retry_resends_the_task_and_records_retry(published, received_signals):
    outcome = run("testproject.videos.tasks.flaky", 2, task_id="exec-r")
    assert outcome.state == TaskState.RETRY
    row = TaskResult.objects.get(task_id="exec-r")
    assert row.state == TaskState.RETRY
    assert row.result["exc_type"] == "ConnectionError"

    (encoded, route), = published
    resent = TaskMessage.from_wire(json.loads(json.dumps(encoded.headers)), json.loads(encoded.payload))
    assert resent.id == "exec-r"  # same id: the caller's AsyncResult follows the retries
    assert resent.retries == 1
    assert resent.args == (2,)
    assert route.queue == "videos"  # back to the queue it came from
    retry, = received_signals["task_retry"]
    assert isinstance(retry["reason"], ConnectionError)

    assert run("testproject.videos.tasks.flaky", 2, task_id="exec-r").state == TaskState.RETRY  # retries=0 again
    second = TaskMessage(id="exec-r", task="testproject.videos.tasks.flaky", args=(2,), retries=1)
    assert execute(second, DELIVERY, HOST).state == TaskState.SUCCESS
    assert AsyncResult("exec-r").get() == 1


def test_retry_past_max_retries_is_a_failure(published):
    message = TaskMessage(id="exec-m", task="testproject.videos.tasks.flaky", args=(5,), retries=2)
    assert execute(message, DELIVERY, HOST).state == TaskState.FAILURE
    assert published == []
    with pytest.raises(MaxRetriesExceededError):
        AsyncResult("exec-m").get()


def test_success_sends_link_with_the_return_value(published):
    link = {"task": "testproject.videos.tasks.add", "args": [10], "kwargs": {}, "options": {"queue": "reports"},
            "immutable": False, "subtask_type": None}
    message = TaskMessage(id="exec-l", task="testproject.videos.tasks.add", args=(1, 2), callbacks=[link],
                          root_id="root-0")
    execute(message, DELIVERY, HOST)
    (encoded, route), = published
    child = TaskMessage.from_wire(json.loads(json.dumps(encoded.headers)), json.loads(encoded.payload))
    assert child.task == "testproject.videos.tasks.add"
    assert child.args == (3, 10)
    assert (child.parent_id, child.root_id) == ("exec-l", "root-0")
    assert route.queue == "reports"


def test_failure_sends_errback_with_the_task_id(published):
    # a task this worker does not know is sent with the id (Celery's rule; a registered errback taking
    # (request, exc, traceback) is called in the worker instead: tests/unit/test_canvas.py)
    errback = {"task": "elsewhere.errback", "args": [], "kwargs": {}, "options": {},
               "immutable": False}
    message = TaskMessage(id="exec-e", task="testproject.videos.tasks.fail", args=("x",), errbacks=[errback])
    execute(message, DELIVERY, HOST)
    (encoded, _), = published
    child = TaskMessage.from_wire(json.loads(json.dumps(encoded.headers)), json.loads(encoded.payload))
    assert child.args == ("exec-e",)


@pytest.mark.parametrize(("requeue", "state"), [(False, TaskState.REVOKED), (True, TaskState.RECEIVED)])
def test_reject_tells_the_worker_what_to_do(clean_registry, requeue, state):
    from django_tasks_q.exceptions import Reject

    @task(name="unit.rejecting")
    def rejecting():
        raise Reject("not now", requeue=requeue)

    outcome = run("unit.rejecting")
    assert (outcome.state, outcome.requeue) == (state, requeue)


def test_a_broken_result_store_does_not_escape(monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(DatabaseBackend, "mark", broken)
    outcome = run("testproject.videos.tasks.add", 1, 2)  # must not raise: a worker never dies from a task
    assert outcome.state == TaskState.FAILURE
