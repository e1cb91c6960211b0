"""Publishing through kombu without a server: ``memory://``, and a broker that refuses connections."""

from __future__ import annotations

import time
import uuid

import pytest

from django_tasks_q.broker import connection
from tests.conftest import take
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.exceptions import BrokerUnavailable
from testproject.videos.tasks import add


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
