"""``apply_async`` / ``send_task`` build, route and encode one message (the broker is replaced by a list)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from django_tasks_q import AsyncResult, send_task
from django_tasks_q.core.message_signing import SIGNATURE_HEADER, verify
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.exceptions import EncodeError
from testproject.reports.tasks import build_report
from testproject.videos.tasks import add, compress, echo


@pytest.fixture
def sent(monkeypatch):
    messages = []

    def capture(encoded, route, *, task_id, reply_to=None, deliver_at=None, like=None):
        headers = json.loads(json.dumps(encoded.headers))
        messages.append((TaskMessage.from_wire(headers, json.loads(encoded.payload)), route, encoded, task_id))

    monkeypatch.setattr("django_tasks_q.core.calling.publish", capture)
    return messages


def test_delay_sends_one_message_and_returns_its_result(sent):
    result = add.delay(2, 3)
    (message, route, encoded, task_id), = sent
    assert isinstance(result, AsyncResult)
    assert result.id == message.id == task_id
    assert result.task_name == "testproject.videos.tasks.add"
    assert (message.task, message.args, message.kwargs) == ("testproject.videos.tasks.add", (2, 3), {})
    assert route.queue == "default"
    assert encoded.content_type == "application/json"


def test_every_call_gets_a_new_id(sent):
    assert add.delay(1, 1).id != add.delay(1, 1).id


def test_countdown_becomes_an_aware_eta(sent):
    before = datetime.now(UTC)
    add.apply_async((1, 2), countdown=30)
    message = sent[0][0]
    assert before + timedelta(seconds=30) <= message.eta <= datetime.now(UTC) + timedelta(seconds=30)


def test_naive_eta_is_taken_as_utc(sent):
    add.apply_async((1, 2), eta=datetime(2030, 1, 1, 12, 0))
    assert sent[0][0].eta == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_expires_in_seconds(sent):
    before = datetime.now(UTC)
    add.apply_async((1, 2), expires=120)
    assert before + timedelta(seconds=120) <= sent[0][0].expires <= datetime.now(UTC) + timedelta(seconds=120)


def test_call_options_reach_the_message(sent):
    add.apply_async((1, 2), task_id="fixed", time_limit=60, soft_time_limit=50, headers={"x-tenant": "acme"},
                    link={"task": "testproject.videos.tasks.echo", "args": [], "kwargs": {}, "options": {}})
    message = sent[0][0]
    assert message.id == "fixed"
    assert (message.time_limit, message.soft_time_limit) == (60, 50)
    assert message.extra_headers == {"x-tenant": "acme"}
    assert message.callbacks[0]["task"] == "testproject.videos.tasks.echo"


def test_task_option_queue_and_settings_routes(sent, settings):
    compress.delay(1)
    build_report.delay("2030-01-01")
    assert [route.queue for _, route, _, _ in sent] == ["videos", "reports"]
    compress.apply_async((1,), queue="urgent", priority=9)
    assert (sent[-1][1].queue, sent[-1][1].priority) == ("urgent", 9)
    settings.TASKS_Q = {**settings.TASKS_Q, "ROUTES": {"testproject.videos.*": {"queue": "routed"}}}
    add.delay(1, 2)
    compress.delay(1)  # its task option still wins over settings
    assert [route.queue for _, route, _, _ in sent[-2:]] == ["routed", "videos"]


def test_unserialisable_args_fail_before_anything_is_sent(sent):
    with pytest.raises(EncodeError, match="testproject.videos.tasks.echo"):
        echo.delay(object())
    assert sent == []


def test_send_task_by_name_of_an_unknown_task(sent):
    result = send_task("elsewhere.tasks.transcode", args=[1], kwargs={"fast": True}, queue="gpu")
    (message, route, _, _), = sent
    assert (message.task, message.args, message.kwargs) == ("elsewhere.tasks.transcode", (1,), {"fast": True})
    assert route.queue == "gpu"
    assert result.task_name == "elsewhere.tasks.transcode"


def test_send_task_uses_the_registered_tasks_options(sent):
    send_task("testproject.videos.tasks.compress", args=[1])
    assert sent[0][1].queue == "videos"


def test_send_task_in_eager_mode_runs_a_registered_task(eager, sent):
    assert send_task("testproject.videos.tasks.add", args=[2, 2]).get() == 4
    assert sent == []


def test_messages_are_signed_when_a_key_is_set(sent, settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": "k3y"}
    add.delay(1, 2)
    encoded = sent[0][2]
    assert SIGNATURE_HEADER in encoded.headers
    verify("k3y", encoded.headers, encoded.payload)


def test_ignore_result_from_the_task_option(sent, clean_registry):
    from django_tasks_q import task

    @task(ignore_result=True)
    def fire_and_forget():
        pass

    fire_and_forget.delay()
    add.delay(1, 2)
    assert [message.ignore_result for message, *_ in sent] == [True, False]
