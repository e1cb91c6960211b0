"""Declaring and calling tasks in this process (docs/tasks.md)."""

from __future__ import annotations

import pytest

from django_tasks_q import Task, shared_task, task
from django_tasks_q.core import context
from django_tasks_q.core.context import Request
from django_tasks_q.exceptions import ImproperlyConfigured


def test_calling_a_task_runs_it_in_process():
    from testproject.videos.tasks import add, echo

    assert add(2, 3) == 5
    assert add(x=1, y=-1) == 0
    assert echo(1, k="v") == {"args": [1], "kwargs": {"k": "v"}}


def test_calling_a_task_does_not_swallow_its_exception():
    from testproject.videos.tasks import fail

    with pytest.raises(ValueError, match="kaput"):
        fail("kaput")


def test_task_keeps_the_function_identity():
    from testproject.videos.tasks import add, compress

    assert add.__name__ == "add"
    assert add.__module__ == "testproject.videos.tasks"
    assert add.__wrapped__(4, 5) == 9
    assert compress.__doc__.startswith("Pretend to compress")
    assert repr(add) == "<task testproject.videos.tasks.add>"


def test_options_are_kept():
    from testproject.reports.tasks import build_report
    from testproject.videos.tasks import compress, flaky

    assert compress.options.queue == "videos"
    assert compress.options.bind is True
    assert compress.options.acks_late is True
    assert flaky.options.max_retries == 2
    assert flaky.options.default_retry_delay == 0
    assert build_report.options.queue == "reports"


def test_bound_task_gets_self_and_request(clean_registry):
    seen = {}

    @task(bind=True)
    def introspect(self, value):
        seen["self"] = self
        seen["request"] = self.request
        return value * 2

    request = Request(id="abc", task=introspect.name, args=(21,), retries=2, delivery_info={"queue": "q1"})
    context.push(request)
    try:
        assert introspect(21) == 42
    finally:
        context.pop()
    assert seen["self"] is introspect
    assert seen["request"] is request
    assert seen["request"].retries == 2
    assert seen["request"].delivery_info["queue"] == "q1"


def test_request_outside_a_task_is_empty():
    from testproject.videos.tasks import whoami

    assert whoami() == {"id": None, "retries": 0, "queue": None, "hostname": None, "eta": None}


def test_requests_nest(clean_registry):
    outer, inner = Request(id="outer"), Request(id="inner")
    context.push(outer)
    context.push(inner)
    assert context.current() is inner
    context.pop()
    assert context.current() is outer
    context.pop()
    assert context.current().id is None
    assert Request(group_id="g").group == "g"


def test_base_class_hooks_exist_and_are_overridden():
    from testproject.videos.tasks import Audited, audited

    assert isinstance(audited, Audited)
    assert isinstance(audited, Task)
    assert audited.name == "videos.audited"
    for hook in ("on_success", "on_failure", "after_return"):
        assert getattr(type(audited), hook) is not getattr(Task, hook), hook
    assert type(audited).on_retry is Task.on_retry  # not overridden: the default no-op
    assert audited(4) == 8


def test_base_hooks_are_called_with_their_documented_arguments(tmp_path, monkeypatch):
    from testproject.videos.tasks import audited

    log = tmp_path / "hooks.log"
    monkeypatch.setenv("TESTPROJECT_HOOK_LOG", str(log))
    audited.on_success(8, "id-1", (4,), {})
    audited.on_failure(ValueError("x"), "id-2", (-1,), {}, None)
    audited.after_return("SUCCESS", 8, "id-1", (4,), {}, None)
    assert log.read_text().splitlines() == ["success id-1 8", "failure id-2 ValueError", "after_return id-1 SUCCESS"]


def test_default_hooks_are_no_ops(clean_registry):
    @task
    def plain():
        pass

    assert plain.on_success(1, "id", (), {}) is None
    assert plain.on_failure(ValueError(), "id", (), {}, None) is None
    assert plain.on_retry(ValueError(), "id", (), {}, None) is None
    assert plain.after_return("SUCCESS", 1, "id", (), {}, None) is None


def test_task_decorator_rejects_positional_and_keyword_mix():
    def f():
        pass

    with pytest.raises(TypeError, match="keyword options"):
        task(f, queue="x")


def test_shared_task_is_task():
    assert shared_task is task


def test_retry_outside_a_task_reraises_the_given_exception():
    from testproject.videos.tasks import flaky

    with pytest.raises(ConnectionError, match="attempt 1 failed"):
        flaky(2)
    with pytest.raises(ImproperlyConfigured, match="outside a running task"):
        flaky.retry()


def test_a_decorator_with_options_can_be_reused(clean_registry):
    from testproject.videos.tasks import Audited

    videos_task = task(base=Audited, queue="videos")

    @videos_task
    def first():
        pass

    @videos_task
    def second():
        pass

    assert isinstance(first, Audited) and isinstance(second, Audited)
    assert first.options.queue == second.options.queue == "videos"
