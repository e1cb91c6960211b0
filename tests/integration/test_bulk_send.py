"""``delay_many`` / ``apply_async_many``, and the direct Redis publish path behind every ``delay()``.

After the first send to a queue (through kombu, which declares it), sends
to Redis skip kombu's producer and write the message themselves: the JSON
must be what kombu writes, in the list kombu would pick, so that our
workers, Celery's workers and kombu's restore all read it as before.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import redis
from django.db import transaction

from django_tasks_q.core.protocol import new_id
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import ImproperlyConfigured, InvalidTaskOptions
from django_tasks_q.models import TaskResult
from testproject.videos.tasks import add
from tests.integration.broker_tools import purge, queue_size
from tests.workers import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "bulk"


def raw_messages(url: str, key: bytes) -> list[dict]:
    return [json.loads(item) for item in redis.Redis.from_url(url).lrange(key, 0, -1)]


def list_keys(url: str) -> set[bytes]:
    return {key for key in redis.Redis.from_url(url).keys(f"{QUEUE}*")}


def test_the_direct_path_writes_what_kombu_writes(redis_url, broker, monkeypatch):
    from django_tasks_q.broker.transport.redis import Channel

    broker(redis_url)
    purge(redis_url, QUEUE)
    direct_sends = []
    put_messages = Channel.put_messages
    monkeypatch.setattr(Channel, "put_messages",
                        lambda self, *args: direct_sends.append(args[2]) or put_messages(self, *args))
    through_kombu = add.apply_async((1, 2), queue=QUEUE, priority=5)  # first send: kombu declares the queue
    direct = add.apply_async((3, 4), queue=QUEUE, priority=5)
    assert [[m["headers"]["id"] for m in sent] for sent in direct_sends] == [[direct.id]]
    [key] = list_keys(redis_url)  # both in the same priority list
    newest, oldest = raw_messages(redis_url, key)
    assert oldest["headers"]["id"] == through_kombu.id and newest["headers"]["id"] == direct.id
    assert newest.keys() == oldest.keys()
    assert newest["properties"].keys() == oldest["properties"].keys()
    for name in ("content-type", "content-encoding"):
        assert newest[name] == oldest[name]
    for name in ("delivery_info", "priority", "delivery_mode", "body_encoding"):
        assert newest["properties"][name] == oldest["properties"][name], name
    assert newest["properties"]["correlation_id"] == direct.id
    assert newest["headers"].keys() == oldest["headers"].keys()
    assert json.loads(base64.b64decode(newest["body"]))[:2] == [[3, 4], {}]
    assert newest["properties"]["delivery_tag"] != oldest["properties"]["delivery_tag"]
    uuid.UUID(newest["properties"]["delivery_tag"])


def test_plain_delays_copy_the_first_message_and_write_what_kombu_writes(redis_url, broker, settings):
    """``delay()`` without options copies the task's first message (its id, arguments and body changed);
    what reaches Redis parses to the message the full path builds, and a worker runs every one."""
    from django_tasks_q.core import calling
    from django_tasks_q.core.options import NO_CALL_OPTIONS

    settings.TASKS_Q = {**settings.TASKS_Q, "ROUTES": {add.name: QUEUE}}
    broker(redis_url)
    purge(redis_url, QUEUE)
    sent = [add.delay(1, 2), add.delay(3, 4), add.delay('quote " é', y="\\"), add.delay(5, y=6)]
    [key] = list_keys(redis_url)
    messages = list(reversed(raw_messages(redis_url, key)))  # oldest first
    assert [m["headers"]["id"] for m in messages] == [r.id for r in sent]
    first = messages[0]  # sent through kombu: the model
    for message, (args, kwargs) in zip(messages[1:], [((3, 4), {}), (('quote " é',), {"y": "\\"}), ((5,), {"y": 6})]):
        task_id = message["headers"]["id"]
        full = calling._build(add.name, args, kwargs, NO_CALL_OPTIONS, add, calling.settings.as_dict(),
                              calling.timezone.now())
        body = json.loads(base64.b64decode(message["body"]))
        assert body == json.loads(full.encoded.payload)
        expected = {**full.encoded.headers, "id": task_id, "root_id": task_id}
        assert message["headers"] == json.loads(json.dumps(expected))
        assert message["properties"]["correlation_id"] == task_id
        assert {k: v for k, v in message["properties"].items() if k not in ("correlation_id", "delivery_tag")} == \
            {k: v for k, v in first["properties"].items() if k not in ("correlation_id", "delivery_tag")}
        assert {k: v for k, v in message.items() if k not in ("headers", "properties", "body")} == \
            {k: v for k, v in first.items() if k not in ("headers", "properties", "body")}
    assert calling._templates.get(add.name, add, calling.settings.as_dict()) is not None
    with WorkerProcess(redis_url, "-P", "solo", "-Q", QUEUE, "-n", "plain@%h"):
        assert [r.get(timeout=30) for r in sent] == [3, 7, 'quote " é\\', 11]


def test_sends_after_redis_lost_its_bindings_are_queued_not_dropped(redis_url, broker, caplog):
    """A FLUSHALL, or a Redis restarted without persistence, takes kombu's binding sets with it: kombu's
    publisher then routes to nothing and drops every message without a word. Ours binds again."""
    broker(redis_url)
    purge(redis_url, QUEUE)
    add.apply_async((0, 0), queue=QUEUE)  # declares the queue and its binding
    client = redis.Redis.from_url(redis_url)
    lost = client.keys("_kombu.binding.*")
    assert lost and client.delete(*lost) == len(lost)
    time.sleep(1.1)  # past binding_cache_ttl: the publisher reads the (now empty) binding table again
    add.apply_async((1, 1), queue=QUEUE)
    add.apply_async_many([((i, i), {}) for i in range(10)], queue=QUEUE)
    assert queue_size(redis_url, QUEUE) == 12
    assert "declaring queue 'bulk' again" in caplog.text
    assert client.keys("_kombu.binding.*")

    # a routing key that no binding matches, even after declaring the queue again, is refused
    with pytest.raises(ImproperlyConfigured, match="no queue is bound to exchange .* routing key 'nowhere'"):
        add.apply_async((2, 2), queue=QUEUE, routing_key="nowhere")
    assert queue_size(redis_url, QUEUE) == 12


def test_delay_many_sends_in_batches_and_a_worker_runs_them_all(redis_url, broker):
    broker(redis_url)
    purge(redis_url, QUEUE)
    results = add.delay_many([(i, i) for i in range(1201)])  # to DEFAULT_QUEUE: past two batches of 500
    results += add.apply_async_many([((i,), {"y": 1}) for i in range(99)], queue=QUEUE, priority=3)
    assert len({r.id for r in results}) == 1300
    assert queue_size(redis_url, QUEUE) == 99
    with WorkerProcess(redis_url, "-P", "threads", "-c", "4", "-Q", f"default,{QUEUE}", "-n", "bulk@%h"):
        assert [r.get(timeout=60) for r in results[-3:]] == [97, 98, 99]
        assert results[1200].get(timeout=60) == 2400
        ran = TaskResult.objects.filter(task_id__in=[r.id for r in results], state=TaskState.SUCCESS)
        assert ran.count() == 1300


def test_delay_many_on_the_embedded_broker(broker, django_assert_max_num_queries):
    broker("django://")
    purge("django://", QUEUE)
    add.apply_async((0, 0), queue=QUEUE)  # declared: what follows measures the bulk path only
    with django_assert_max_num_queries(40):  # multi-row INSERTs, not one per message
        results = add.apply_async_many([((i, 1), None) for i in range(1201)], queue=QUEUE, priority=3)
    assert len({r.id for r in results}) == 1201 and queue_size("django://", QUEUE) == 1202
    with pytest.raises(RuntimeError), transaction.atomic():  # the caller's transaction: all or nothing
        add.apply_async_many([((i, 2), None) for i in range(700)], queue=QUEUE)
        assert queue_size("django://", QUEUE) == 1902
        raise RuntimeError("rolled back")
    assert queue_size("django://", QUEUE) == 1202
    with WorkerProcess("django://", "-P", "threads", "-c", "4", "-Q", QUEUE, "-n", "bulkdb@%h"):
        assert [r.get(timeout=60) for r in results[-3:]] == [1199, 1200, 1201]
        ran = TaskResult.objects.filter(task_id__in=[r.id for r in results], state=TaskState.SUCCESS)
        assert ran.count() == 1201


def test_delay_many_with_an_eta_parks_the_batch_on_the_embedded_broker(broker, django_assert_max_num_queries):
    from django_tasks_q.models import BrokerMessage

    broker("django://")
    purge("django://", QUEUE)
    BrokerMessage.objects.filter(queue=QUEUE).delete()
    with django_assert_max_num_queries(40):  # multi-row INSERTs, parked ones too
        results = add.apply_async_many([((i, 1), None) for i in range(1201)], queue=QUEUE, countdown=3600)
    rows = BrokerMessage.objects.filter(queue=QUEUE)
    assert rows.count() == 1201 and queue_size("django://", QUEUE) == 0  # none deliverable before its time
    soon, late = time.time() + 3590, time.time() + 3610
    assert all(soon < row.visible_at.timestamp() < late for row in rows)
    parked_ids = {json.loads(row.payload)["headers"]["id"] for row in rows}
    assert parked_ids == {r.id for r in results}
    BrokerMessage.objects.filter(queue=QUEUE).delete()


def test_bad_calls_are_refused_before_anything_is_sent(redis_url, broker):
    broker(redis_url)
    purge(redis_url, QUEUE)
    with pytest.raises(TypeError,
                       match=r"call 1 must be a tuple of arguments, got 2 \(for one argument write \(2,\)\)"):
        add.delay_many([(1, 1), 2])
    with pytest.raises(TypeError, match=r"call 0 must be an \(args, kwargs\) pair"):
        add.apply_async_many([((1, 2),)], queue=QUEUE)
    with pytest.raises(InvalidTaskOptions, match="each call gets its own id"):
        add.apply_async_many([((1, 2), {})], queue=QUEUE, task_id="same-for-all")
    with pytest.raises(InvalidTaskOptions):
        add.apply_async_many([((1, 2), {})], queue=QUEUE, countdwn=3)
    assert queue_size(redis_url, QUEUE) == 0
    assert add.apply_async_many([], queue=QUEUE) == []


def test_eager_mode_runs_each_call(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "ALWAYS_EAGER": True}
    assert [r.get() for r in add.delay_many([(1, 2), (3, 4)])] == [3, 7]


def test_new_ids_are_random_version_4_uuids():
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    parsed = [uuid.UUID(value) for value in ids]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == value for u, value in zip(parsed, ids))


def _consume_all(url: str, queue_name: str, expected: int, timeout: float = 30) -> list:
    """Every message of ``queue_name`` (acked), as kombu hands them to a consumer."""
    from django_tasks_q.broker.connection import new_connection
    from django_tasks_q.broker.queues import get_queue

    got: list = []
    deadline = time.monotonic() + timeout
    with new_connection(url) as conn:
        with conn.Consumer(get_queue(queue_name), callbacks=[lambda body, message: got.append(message)],
                           accept=["json"]):
            while len(got) < expected and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
        for message in got:
            message.ack()
    return got


def test_a_bulk_send_on_rabbitmq_publishes_the_batch_then_reads_its_confirms(amqp_url, broker):
    """``apply_async_many()`` on RabbitMQ: after the first message (which declares the queue), each batch of
    500 goes out on a confirm-mode channel of its own and its confirms are read after it. The messages reach
    a consumer in order, each exactly as a single ``apply_async()`` writes it (same properties, headers and
    body layout), and a worker runs them all."""
    broker(amqp_url)
    purge(amqp_url, QUEUE)
    single = add.apply_async((0, 0), queue=QUEUE)
    results = add.apply_async_many([((i, i), None) for i in range(1200)], queue=QUEUE)
    got = _consume_all(amqp_url, QUEUE, 1201)
    assert [message.headers["id"] for message in got] == [single.id] + [r.id for r in results]
    assert [message.payload[0] for message in got[1:]] == [[i, i] for i in range(1200)]
    reference, batched = got[0], got[600]
    for message in (reference, batched):
        assert message.properties["delivery_mode"] == 2
        assert message.properties["correlation_id"] == message.headers["id"]
        assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert set(batched.headers) == set(reference.headers)
    assert set(batched.properties) == set(reference.properties)
    results = add.apply_async_many([((i, 1), None) for i in range(600)], queue=QUEUE)
    with WorkerProcess(amqp_url, "-P", "threads", "-c", "4", "-Q", QUEUE, "-n", "bulkamqp@%h"):
        assert [r.get(timeout=60) for r in results[-2:]] == [599, 600]
        assert TaskResult.objects.filter(task_id__in=[r.id for r in results], state=TaskState.SUCCESS).count() == 600


def test_messages_rabbitmq_refuses_in_a_bulk_send_are_reported_not_dropped_silently(amqp_url, broker):
    """A queue that rejects publishes past 5 messages (a policy with ``overflow: reject-publish``) nacks the
    rest of a batch: the send raises ``BrokerUnavailable`` saying how many were confirmed and refused."""
    from django_tasks_q.exceptions import BrokerUnavailable
    from tests import servers

    name = f"bulk-capped-{uuid.uuid4().hex[:6]}"
    server = servers.RUNNING[amqp_url]
    server.ctl("set_policy", "--apply-to", "queues", f"cap-{name}", f"^{name}$",
               '{"max-length": 5, "overflow": "reject-publish"}')
    try:
        broker(amqp_url)
        purge(amqp_url, name)
        deadline = time.monotonic() + 10  # the policy reaches the queue asynchronously
        with pytest.raises(BrokerUnavailable) as refused:
            while time.monotonic() < deadline:
                purge(amqp_url, name)
                add.apply_async_many([((i, i), None) for i in range(20)], queue=name)
                time.sleep(0.2)
        message = str(refused.value)
        assert "RabbitMQ refused (nacked) 15 of 19 messages; 4 were confirmed" in message, message
        assert "1 of 20 messages were sent before this batch of 19" in message, message
        assert queue_size(amqp_url, name) == 5
    finally:
        server.ctl("clear_policy", f"cap-{name}")
