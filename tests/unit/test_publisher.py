"""Publishing through kombu without a server: ``memory://``, and a broker that refuses connections."""

from __future__ import annotations

import time
import uuid

import pytest

from django_tasks_q.broker import connection
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.exceptions import BrokerUnavailable
from testproject.videos.tasks import add
from tests.conftest import take


def test_publish_to_memory_broker(broker):
    broker("memory://")
    queue = f"unit-{uuid.uuid4().hex[:8]}"
    result = add.apply_async((1, 2), queue=queue, priority=5)

    received = take(queue)
    message = TaskMessage.from_wire(received.headers, received.decode())
    assert (message.id, message.task, message.args) == (result.id, "testproject.videos.tasks.add", (1, 2))
    assert received.properties["correlation_id"] == result.id
    assert received.properties["priority"] == 5
    assert received.properties["delivery_mode"] == 2  # persistent
    assert received.delivery_info["routing_key"] == queue
    assert received.content_type == "application/json"


def test_the_producer_is_reused_per_thread_and_url(broker):
    broker("memory://")
    assert connection.current().producer is connection.current().producer
    first = connection.current().producer
    broker("memory://localhost/")
    assert connection.current().producer is not first


@pytest.mark.parametrize("url", ["redis://:s3cret@127.0.0.1:1/0", "amqp://guest:s3cret@127.0.0.1:1//"])
def test_unreachable_broker_raises_quickly_with_a_masked_url(broker, url):
    broker(url, BROKER_PUBLISH_RETRIES=1, BROKER_CONNECTION_TIMEOUT=0.5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as excinfo:
        add.delay(1, 2)
    assert time.monotonic() - started < 10
    text = str(excinfo.value)
    assert "testproject.videos.tasks.add" in text
    assert "127.0.0.1:1" in text
    assert "s3cret" not in text and ":**@" in text
    assert isinstance(excinfo.value, ConnectionError)


def test_a_batch_written_from_shared_headers_is_what_kombu_would_write():
    """``envelope_texts`` (one ``apply_async_many()`` on Redis) parses to ``envelope()``'s message, field for
    field, for awkward arguments too; only the delivery tags (random per message) differ."""
    import json
    from datetime import datetime, timezone

    from django.utils import timezone as dj_timezone

    from django_tasks_q.broker.publisher import envelope, envelope_texts
    from django_tasks_q.core import calling
    from django_tasks_q.core.options import CallOptions
    from django_tasks_q.core.routing import Route

    calls = [((1, 2), {}), (('quote " and \\ and é', None), {"k": [1.5, {"x": "ü"}]}), ((), {}), ((3,), {"y": 4})]
    call = CallOptions.from_kwargs("test", expires=60, countdown=5, priority=3, headers={"x-extra": "yes"})
    conf = {"TASK_SERIALIZER": "json", "SIGNING_KEY": None, "ETA_HOLD_MAX": 30}
    now = dj_timezone.now()
    built = calling._build_many(add.name, calls, call, add, conf, now)
    full = [calling._build(add.name, args, kwargs, call, add, conf, now) for args, kwargs in calls]
    route = Route(queue="bulk", routing_key="bulk", priority=3)
    batch = [(item.encoded, item.task_id, item.deliver_at) for item in built]
    texts = envelope_texts(batch, "bulk", "bulk", route)
    for text, item, reference in zip(texts, built, full):
        parsed = json.loads(text)
        expected = json.loads(json.dumps(envelope(item.encoded, "bulk", "bulk",
                                                  {"correlation_id": item.task_id, "delivery_mode": 2, "priority": 3})))
        assert parsed["properties"].pop("delivery_tag") != expected["properties"].pop("delivery_tag")
        assert parsed == expected
        # the copied message is the one _build makes for the same call, but for its id
        assert item.encoded.payload == reference.encoded.payload
        own = {"id", "root_id"}
        assert {k: v for k, v in item.encoded.headers.items() if k not in own} == \
            {k: v for k, v in reference.encoded.headers.items() if k not in own}
        assert item.encoded.headers["id"] == item.task_id == item.encoded.headers["root_id"]
    assert len({item.task_id for item in built}) == len(calls)
    assert built[0].encoded.headers["eta"] and datetime.fromisoformat(built[0].encoded.headers["eta"]) > \
        datetime.now(timezone.utc)


def test_arguments_json_cannot_carry_take_the_full_path_in_a_batch():
    from datetime import datetime
    from decimal import Decimal

    from django.utils import timezone as dj_timezone

    from django_tasks_q.core import calling
    from django_tasks_q.core.options import CallOptions
    from django_tasks_q.exceptions import EncodeError

    conf = {"TASK_SERIALIZER": "json", "SIGNING_KEY": None, "ETA_HOLD_MAX": 30}
    call = CallOptions.from_kwargs("test")
    when = datetime(2026, 1, 2, 3, 4, 5)
    built = calling._build_many(add.name, [((1, 2), {}), ((when, Decimal("1.5")), {})], call, add, conf,
                                dj_timezone.now())
    assert "__type__" in built[1].encoded.payload  # kombu's encoder wrote it: the worker reads a datetime back
    with pytest.raises(EncodeError, match="NaN"):
        calling._build_many(add.name, [((1, 2), {}), ((float("nan"),), {})], call, add, conf, dj_timezone.now())
