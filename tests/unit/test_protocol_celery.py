"""Wire compatibility with the real ``celery`` package (docs/protocol.md).

Celery builds a message with ``app.amqp.as_task_v2`` and we read it with
``TaskMessage.from_wire``; we build one and Celery's worker-side ``Request``
reads it (and runs it). Both pass through JSON as they would on a broker.
"""

from __future__ import annotations

import json
import types
import uuid
from datetime import UTC, datetime, timedelta

import celery
import pytest
from celery.worker.request import Request as CeleryRequest
from kombu.serialization import dumps, loads

from django_tasks_q.core.protocol import TaskMessage


@pytest.fixture(scope="module")
def celery_app():
    app = celery.Celery("tasksq-compat", set_as_current=False, broker="memory://")
    app.conf.task_protocol = 2

    @app.task(name="testproject.videos.tasks.add", shared=False)
    def add(x, y):
        return x + y

    return app


def over_the_wire(headers: dict, body) -> tuple[dict, list]:
    """JSON-encode and decode headers and body the way a broker round trip does."""
    content_type, encoding, payload = dumps(body, serializer="json")
    return json.loads(json.dumps(headers)), loads(payload, content_type, encoding)


def test_we_read_a_message_celery_wrote(celery_app):
    task_id = str(uuid.uuid4())
    before = datetime.now(UTC)
    sent = celery_app.amqp.as_task_v2(
        task_id, "testproject.videos.tasks.add", (2, 3), {"extra": [1, "x"]},
        countdown=30, expires=120, time_limit=60, soft_time_limit=50, retries=1,
        group_id="g-1", parent_id="p-1",
        callbacks=[{"task": "cb", "args": [], "kwargs": {}, "options": {}, "subtask_type": None, "immutable": False}],
    )
    after = datetime.now(UTC)
    headers, body = over_the_wire(sent.headers, sent.body)

    message = TaskMessage.from_wire(headers, body)

    assert message.id == task_id
    assert message.task == "testproject.videos.tasks.add"
    assert message.args == (2, 3)
    assert message.kwargs == {"extra": [1, "x"]}
    assert message.eta is not None and message.eta.tzinfo is not None
    assert before + timedelta(seconds=30) - timedelta(seconds=1) <= message.eta <= after + timedelta(seconds=31)
    assert message.expires is not None and message.expires.tzinfo is not None
    assert before + timedelta(seconds=119) <= message.expires <= after + timedelta(seconds=121)
    assert (message.time_limit, message.soft_time_limit) == (60, 50)
    assert message.retries == 1
    assert message.root_id == task_id
    assert message.parent_id == "p-1"
    assert message.group_id == "g-1"
    assert message.callbacks[0]["task"] == "cb"
    assert message.origin == sent.headers["origin"]
    assert message.extra_headers == {}  # every Celery header is a known one
    assert sent.properties["correlation_id"] == task_id


def test_celery_message_without_options_reads_as_defaults(celery_app):
    sent = celery_app.amqp.as_task_v2("id-0", "testproject.videos.tasks.noop")
    message = TaskMessage.from_wire(*over_the_wire(sent.headers, sent.body))
    assert (message.args, message.kwargs) == ((), {})
    assert (message.eta, message.expires) == (None, None)
    assert (message.time_limit, message.soft_time_limit) == (None, None)


def test_our_headers_include_every_celery_header(celery_app):
    sent = celery_app.amqp.as_task_v2("id-1", "t", (1,), {}, countdown=5, expires=10, time_limit=3,
                                      soft_time_limit=2)
    ours = TaskMessage(id="id-1", task="t", args=(1,), eta=datetime.now(UTC), time_limit=3, soft_time_limit=2)
    missing = set(sent.headers) - set(ours.headers())
    assert not missing, f"headers Celery sends that we do not: {sorted(missing)}"


def test_our_headers_have_celerys_value_types(celery_app):
    sent = celery_app.amqp.as_task_v2("id-1", "t", (1, "a"), {"k": 2}, time_limit=3, soft_time_limit=2)
    ours = TaskMessage(id="id-1", task="t", args=(1, "a"), kwargs={"k": 2}, time_limit=3, soft_time_limit=2).headers()
    for key in ("lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
                "root_id", "parent_id", "argsrepr", "kwargsrepr", "ignore_result", "replaced_task_nesting",
                "stamped_headers", "stamps"):
        assert ours[key] == sent.headers[key], key
    ours_body, celery_body = TaskMessage(id="id-1", task="t", args=(1, "a"), kwargs={"k": 2}).body(), sent.body
    assert json.loads(json.dumps(ours_body)) == json.loads(json.dumps(celery_body))


def test_celery_worker_reads_and_runs_a_message_we_wrote(celery_app):
    eta = datetime.now(UTC) + timedelta(minutes=5)
    expires = eta + timedelta(hours=1)
    ours = TaskMessage(id="ours-1", task="testproject.videos.tasks.add", args=(2, 3), eta=eta, expires=expires,
                       time_limit=60, soft_time_limit=50, parent_id="p-9")
    encoded = ours.encode("json")
    headers = json.loads(json.dumps(encoded.headers))
    kombu_message = types.SimpleNamespace(
        headers=headers, body=encoded.payload, payload=loads(encoded.payload, encoded.content_type,
                                                             encoded.content_encoding),
        content_type=encoded.content_type, content_encoding=encoded.content_encoding,
        delivery_info={"exchange": "", "routing_key": "default"},
        properties={"correlation_id": "ours-1"},
    )

    request = CeleryRequest(kombu_message, app=celery_app, task=celery_app.tasks["testproject.videos.tasks.add"])

    assert request.id == "ours-1"
    assert request.name == "testproject.videos.tasks.add"
    assert request.eta == eta
    assert request.expires == expires
    assert list(request.time_limits) == [60, 50]
    assert request.args == [2, 3]
    assert request.kwargs == {}
    assert request.root_id == "ours-1"
    assert request.parent_id == "p-9"
    assert request.execute() == 5
