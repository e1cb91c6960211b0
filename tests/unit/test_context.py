"""One message model: the mapping between the wire message, the running request and the call options.

A message read by a worker becomes ``self.request`` (``Request.from_message``);
a retry turns the request back into call options (``Request.resend_options``),
and those into the next message (``CallOptions.to_message``). The round trip
must give back the message it started from, with one more retry: a field of
``TaskMessage`` added but not mapped fails here until it is mapped, or listed
below as one a retry does not carry.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pytest

from django_tasks_q.core.context import Request
from django_tasks_q.core.options import CallOptions, TaskOptions
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.results.backend import MemoryBackend
from django_tasks_q.worker.revoked import record_revoked

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
#: message fields a retry does not carry to its next attempt (as Celery): who sent it, where replies
#: go, and the caller's own headers; ``eta`` is the retry's own (its countdown or eta)
NOT_CARRIED = {"origin", "reply_to", "extra_headers", "eta"}


def full_message() -> TaskMessage:
    return TaskMessage(
        id="t-1", task="videos.encode", args=(1, "two"), kwargs={"three": 3},
        eta=NOW - timedelta(seconds=5), expires=NOW + timedelta(hours=1), retries=2,
        time_limit=60.0, soft_time_limit=50.0, root_id="root-1", parent_id="parent-1", group_id="g-1",
        group_index=4, ignore_result=True, callbacks=[{"task": "cb", "args": [], "kwargs": {}, "options": {}}],
        errbacks=[{"task": "eb", "args": [], "kwargs": {}, "options": {}}],
        chain=[{"task": "next", "args": [], "kwargs": {}, "options": {}}], chord={"task": "body"},
        origin="gen1@host", reply_to="reply-queue", extra_headers={"x-custom": "yes"},
    )


def test_a_request_carries_every_field_of_its_message():
    message = full_message()
    request = Request.from_message(message, {"queue": "videos", "priority": 7}, "w@host", eager=True,
                                   backend="the-backend")
    assert (request.id, request.task, request.args, request.kwargs) == ("t-1", "videos.encode", (1, "two"),
                                                                        {"three": 3})
    assert (request.retries, request.eta, request.expires) == (2, message.eta, message.expires)
    assert (request.parent_id, request.root_id, request.group_id, request.group, request.group_index) == (
        "parent-1", "root-1", "g-1", "g-1", 4)
    assert (request.callbacks, request.errbacks, request.chain, request.chord) == (
        message.callbacks, message.errbacks, message.chain, message.chord)
    assert (request.time_limit, request.soft_time_limit, request.ignore_result) == (60.0, 50.0, True)
    assert (request.origin, request.headers, request.hostname) == ("gen1@host", {"x-custom": "yes"}, "w@host")
    assert request.delivery_info == {"queue": "videos", "priority": 7}
    assert request.is_eager and request.backend == "the-backend"


def test_a_first_message_is_its_own_root():
    request = Request.from_message(TaskMessage(id="t-2", task="x"), {}, None)
    assert request.root_id == "t-2" and request.parent_id is None and not request.is_eager


def test_a_retry_sends_the_same_message_again_with_one_more_retry():
    message = full_message()
    request = Request.from_message(message, {"queue": "videos", "priority": 7}, "w@host")
    options = request.resend_options(None, NOW + timedelta(minutes=1))
    assert options["queue"] == "videos" and options["priority"] == 7
    call = CallOptions.from_kwargs("retry", **options)
    again = call.to_message(message.task, request.args, request.kwargs, None, NOW)
    assert again.retries == message.retries + 1 and again.eta == NOW + timedelta(minutes=1)
    for name in {f.name for f in fields(TaskMessage)} - NOT_CARRIED - {"retries"}:
        assert getattr(again, name) == getattr(message, name), name


def test_resend_options_leave_out_what_has_no_value():
    request = Request.from_message(TaskMessage(id="t-3", task="x"), {"queue": "default", "priority": 0}, None)
    assert request.resend_options(10, None) == {"task_id": "t-3", "retries": 1, "countdown": 10,
                                                "root_id": "t-3", "queue": "default"}


def test_call_options_fall_back_to_the_declared_task_options():
    declared = TaskOptions(time_limit=30, soft_time_limit=20, expires=60, ignore_result=True)
    message = CallOptions(countdown=5, time_limit=10).to_message("x", [1], None, declared, NOW)
    assert (message.args, message.kwargs) == ((1,), {})
    assert message.eta == NOW + timedelta(seconds=5) and message.expires == NOW + timedelta(seconds=60)
    assert (message.time_limit, message.soft_time_limit, message.ignore_result) == (10, 20, True)
    assert message.id and message.id != CallOptions().to_message("x", (), {}, None, NOW).id
    plain = CallOptions(task_id="given").to_message("x", (), {}, None, NOW)
    assert plain.id == "given" and plain.eta is None and plain.expires is None and plain.ignore_result is False


def test_record_revoked_stores_settles_then_signals_and_a_best_effort_store_error_is_logged(caplog):
    from django_tasks_q import signals

    order: list[str] = []

    class Backend(MemoryBackend):
        def mark(self, task_id, state, **kwargs):
            order.append(f"mark {state}")
            if task_id == "broken":
                raise RuntimeError("database down")
            super().mark(task_id, state, **kwargs)

    def receiver(sender, **kwargs):
        order.append(f"signal expired={kwargs['expired']}")

    backend = Backend()
    signals.task_revoked.connect(receiver)
    try:
        request = Request.from_message(TaskMessage(id="gone", task="x"), {}, "w@host")
        record_revoked(backend, request, RuntimeError("expired"), expired=True, settle=lambda: order.append("ack"))
        broken = Request.from_message(TaskMessage(id="broken", task="x"), {}, "w@host")
        record_revoked(backend, broken, RuntimeError("revoked"), settle=lambda: order.append("ack"),
                       best_effort=True)
    finally:
        signals.task_revoked.disconnect(receiver)
    assert order == [f"mark {TaskState.REVOKED}", "ack", "signal expired=True",
                     f"mark {TaskState.REVOKED}", "ack", "signal expired=False"]
    assert backend.meta("gone").state == TaskState.REVOKED
    assert "could not record REVOKED for broken" in caplog.text
    order.clear()  # a terminated task's store error is its ladder's to handle: nothing after it happens
    with pytest.raises(RuntimeError, match="database down"):
        record_revoked(backend, broken, RuntimeError("terminated"), settle=lambda: order.append("ack"))
    assert order == [f"mark {TaskState.REVOKED}"]
