"""The ``django://`` kombu transport against a real database.

In-process tests use pytest-django's database (autocommit, ``transactional_db``).
The multi-process tests run every party -- publisher, consumers, prober -- as
subprocesses of an agent script (``AGENT`` below) on a database they share: a
SQLite file, or a fresh PostgreSQL database from the ``postgres_url`` fixture.
The binding tests across processes (``peers``) run their consumers as agents
on the test process's own database, and publish from the test process, which
never declared the bindings it routes by.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection as db_connection
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from kombu import Connection, Exchange, Queue

from django_tasks_q.broker.delayed import PARK_HEADER
from django_tasks_q.broker.transport.django import ExchangeTypeMismatch, Transport, Unroutable, register
from django_tasks_q.models import BrokerMessage
from django_tasks_q.models.transport import BrokerBinding
from tests import servers

ROOT = Path(__file__).resolve().parent.parent.parent

register()


def connect(**options) -> Connection:
    return Connection("django://", transport_options=options)


def bodies(messages) -> list:
    return [message.payload for message in messages]


def drain(channel, queue: str) -> list:
    """Every payload waiting in ``queue``, taken without ack."""
    got = []
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        got.append(message.payload)
    return got


def binding_rows() -> set[tuple[str, str, str, str]]:
    return set(BrokerBinding.objects.values_list("exchange", "exchange_type", "routing_key", "queue"))


# --------------------------------------------------------------------------
# In-process


def test_register_is_idempotent_and_resolves_the_scheme():
    register()
    register()
    with connect() as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.transport.driver_type == "django"


def test_round_trip_and_ack_deletes_the_row(transactional_db):
    with connect() as conn:
        queue = conn.SimpleQueue("round-trip")
        queue.put({"hello": "world"})
        assert BrokerMessage.objects.filter(queue="round-trip").count() == 1

        message = queue.get(timeout=2)
        assert message.payload == {"hello": "world"}
        assert not message.delivery_info.get("redelivered")
        row = BrokerMessage.objects.get()
        assert row.reserved_until > timezone.now()
        assert row.delivery_tag == message.delivery_tag

        message.ack()
        assert not BrokerMessage.objects.exists()
        queue.close()


def test_producer_consumer_drain_events(transactional_db):
    received = []
    queue = Queue("pc", routing_key="pc")
    with connect() as conn:
        conn.Producer().publish({"n": 1}, routing_key="pc", declare=[queue])
        with conn.Consumer(queue, callbacks=[lambda body, message: (received.append(body), message.ack())]):
            conn.drain_events(timeout=2)
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.1)
    assert received == [{"n": 1}]
    assert not BrokerMessage.objects.exists()


def test_priority_first_then_fifo(transactional_db):
    with connect() as conn:
        producer = conn.Producer()
        queue = Queue("prio", routing_key="prio")
        for name, priority in [("a0", 0), ("b5", 5), ("c9", 9), ("d5", 5), ("e0", 0), ("f-none", None)]:
            producer.publish(name, routing_key="prio", priority=priority, declare=[queue])
        channel = conn.default_channel
        got = [channel.basic_get("prio", no_ack=True) for _ in range(6)]
        assert bodies(got) == ["c9", "b5", "d5", "a0", "e0", "f-none"]
        assert channel.basic_get("prio") is None
    assert not BrokerMessage.objects.exists()


def test_publish_joins_the_callers_transaction(transactional_db):
    with connect() as conn:
        queue = conn.SimpleQueue("atomic")
        with pytest.raises(RuntimeError), transaction.atomic():
            queue.put("rolled back")
            assert BrokerMessage.objects.count() == 1
            raise RuntimeError
        assert not BrokerMessage.objects.exists()
        with transaction.atomic():
            queue.put("committed")
        assert queue.get(timeout=1).payload == "committed"
        queue.close()


def test_reject_with_and_without_requeue(transactional_db):
    with connect() as conn:
        queue = Queue("reject", routing_key="reject")
        for body in ("kept", "dropped"):
            conn.Producer().publish(body, routing_key="reject", declare=[queue])
        channel = conn.channel()  # basic_get claims one message at a time

        first = channel.basic_get("reject")
        first.requeue()
        row = BrokerMessage.objects.get(delivery_tag=first.delivery_tag)
        assert row.reserved_until is None
        assert BrokerMessage.objects.count() == 2

        again = channel.basic_get("reject")  # keeps its place at the head of the queue
        assert again.payload == "kept"
        assert again.delivery_info["redelivered"] is True
        assert again.headers["redelivered"] is True

        second = channel.basic_get("reject")
        assert second.payload == "dropped"
        second.reject()
        assert list(BrokerMessage.objects.values_list("delivery_tag", flat=True)) == [again.delivery_tag]
        again.ack()
        assert not BrokerMessage.objects.exists()


@pytest.mark.parametrize("how", ["close", "recover"])
def test_unacked_messages_are_restored_without_duplicates(transactional_db, how):
    with connect() as conn:
        producer = conn.Producer()
        queue = Queue("restore", routing_key="restore")
        for n in range(3):
            producer.publish(n, routing_key="restore", declare=[queue])
        channel = conn.channel()
        held = [channel.basic_get("restore") for _ in range(3)]
        assert bodies(held) == [0, 1, 2]
        assert BrokerMessage.objects.filter(reserved_until__isnull=False).count() == 3
        if how == "close":
            channel.close()
        else:
            channel.basic_recover(requeue=True)
        assert BrokerMessage.objects.count() == 3
        assert not BrokerMessage.objects.filter(reserved_until__isnull=False).exists()

        again = conn.default_channel
        redelivered = [again.basic_get("restore") for _ in range(3)]
        assert bodies(redelivered) == [0, 1, 2]
        assert all(m.delivery_info["redelivered"] for m in redelivered)
        for message in redelivered:
            message.ack()
    # Closing the connection restored nothing twice and left nothing behind.
    assert not BrokerMessage.objects.exists()


def test_closing_the_connection_restores_held_messages(transactional_db):
    with connect() as conn:
        conn.SimpleQueue("bye").put("x")
        assert conn.default_channel.basic_get("bye") is not None
    assert BrokerMessage.objects.count() == 1
    assert BrokerMessage.objects.get().reserved_until is None


def test_claim_lasts_while_its_holder_lives_even_without_draining(transactional_db):
    queue = Queue("vt", routing_key="vt")
    with connect(visibility_timeout=0.3) as holder, connect(visibility_timeout=0.3) as other:
        holder.Producer().publish("job", routing_key="vt", declare=[queue])
        held = []
        with holder.Consumer(queue, callbacks=[lambda body, message: held.append(message)]):
            holder.drain_events(timeout=1)
            assert len(held) == 1
            # Busy (not draining, like a solo pool in a long task): the keeper
            # thread extends the claim well past its 0.3 s deadline.
            until = time.monotonic() + 1.2
            while time.monotonic() < until:
                assert other.default_channel.basic_get("vt") is None
                time.sleep(0.05)
            # The keeper stops (as when the process dies): the claim lapses.
            holder.transport.stop_keeping_claims()
            time.sleep(0.5)
            stolen = other.default_channel.basic_get("vt")
            assert stolen is not None and stolen.payload == "job"
            assert stolen.delivery_info["redelivered"] is True
            stolen.ack()
            held[0].ack()  # a late ack of a message already acked elsewhere is harmless
    assert not BrokerMessage.objects.exists()


def test_a_consumer_claims_what_its_prefetch_window_has_room_for(transactional_db):
    delivered = []
    queue = Queue("batch", routing_key="batch")
    with connect() as conn:
        producer = conn.Producer()
        for n, priority in enumerate([0, 0, 5, 0, 9, 0, 0]):
            producer.publish(n, routing_key="batch", priority=priority, declare=[queue])
        consumer = conn.Consumer(queue, callbacks=[lambda body, message: delivered.append(message)],
                                 prefetch_count=3)
        with consumer:
            conn.drain_events(timeout=2)
            # One claim took three rows (the window's room), highest priority first, and handed out one.
            assert [m.payload for m in delivered] == [4]
            claimed = BrokerMessage.objects.filter(reserved_until__isnull=False)
            assert sorted(claimed.values_list("delivery_count", flat=True)) == [1, 1, 1]
            conn.drain_events(timeout=2)
            conn.drain_events(timeout=2)
            assert [m.payload for m in delivered] == [4, 2, 0]  # the claimed batch, in order, before any new claim
            assert claimed.count() == 3
            with pytest.raises(socket.timeout):  # window full: nothing more is claimed
                conn.drain_events(timeout=0.1)
            assert claimed.count() == 3

            delivered.pop(0).ack()  # room for one: the next claim takes one
            conn.drain_events(timeout=2)
            assert [m.payload for m in delivered] == [2, 0, 1]
            assert claimed.count() == 3

            # Claimed and not yet delivered: extended as the delivered ones are, given back on cancel.
            for message in delivered:
                message.ack()
            delivered.clear()
            conn.drain_events(timeout=2)  # claims 3, delivers 1
            assert claimed.count() == 3
            claimed_until = max(claimed.values_list("reserved_until", flat=True))
            time.sleep(0.01)
            consumer.channel.extend_reservations()
            assert min(claimed.values_list("reserved_until", flat=True)) > claimed_until
        # Cancelled: the two never delivered are free again, not counted as delivered; the delivered one is held.
        assert [m.payload for m in delivered] == [3]
        held = BrokerMessage.objects.filter(reserved_until__isnull=False)
        assert list(held.values_list("delivery_tag", flat=True)) == [delivered[0].delivery_tag]
        free = BrokerMessage.objects.filter(reserved_until__isnull=True)
        assert sorted(free.values_list("delivery_count", flat=True)) == [0, 0]
        again = [conn.default_channel.basic_get("batch", no_ack=True) for _ in range(2)]
        assert [m.payload for m in again] == [5, 6]
        assert not any(m.delivery_info.get("redelivered") for m in again)


def test_no_ack_consumers_delete_on_delivery(transactional_db):
    received = []
    queue = Queue("noack", routing_key="noack")
    with connect() as conn:
        conn.Producer().publish("a", routing_key="noack", declare=[queue])
        with conn.Consumer(queue, no_ack=True, callbacks=[lambda body, message: received.append(body)]):
            conn.drain_events(timeout=1)
        assert received == ["a"]
        assert not BrokerMessage.objects.exists()


def test_size_purge_delete(transactional_db):
    with connect() as conn:
        channel = conn.default_channel
        queue = Queue("sizes", routing_key="sizes")
        producer = conn.Producer()
        for n in range(4):
            producer.publish(n, routing_key="sizes", declare=[queue])
        assert channel._has_queue("sizes") and not channel._has_queue("never-declared")
        assert queue(channel).queue_declare(passive=True).message_count == 4
        held = channel.basic_get("sizes")
        assert channel._size("sizes") == 3
        assert channel.queue_purge("sizes") == 3  # the held message stays with its consumer
        assert BrokerMessage.objects.count() == 1
        held.ack()
        producer.publish("later", routing_key="sizes")
        channel.queue_delete("sizes")
        assert not BrokerMessage.objects.exists()


def test_parked_messages_wait_until_released(transactional_db):
    """The park header sets visible_at; nothing parked is delivered until release_parked() finds it due."""
    with connect() as conn:
        conn.SimpleQueue("later").put("soon", headers={PARK_HEADER: time.time() + 3})
        conn.SimpleQueue("later").put("week", headers={PARK_HEADER: time.time() + 7 * 86400})
        channel = conn.default_channel
        assert BrokerMessage.objects.filter(visible_at__isnull=False).count() == 2
        assert channel.basic_get("later") is None and channel._size("later") == 0
        assert channel.release_parked() == 0  # 3 s out is beyond RELEASE_LEAD
        time.sleep(1.2)
        assert channel.release_parked() == 1
        assert channel.basic_get("later", no_ack=True).payload == "soon"
        assert channel.basic_get("later") is None
        assert BrokerMessage.objects.get().visible_at > timezone.now() + timedelta(days=6)


def test_idle_polling_backs_off_without_busy_looping(transactional_db, django_assert_max_num_queries):
    with connect(polling_interval=0.2) as conn:
        with conn.Consumer(Queue("idle", routing_key="idle"), callbacks=[]):
            # 1 s idle: 5, 10, 20, 40, 80, 160, then 200 ms sleeps -- about a dozen polls.
            with django_assert_max_num_queries(16), pytest.raises(socket.timeout):
                conn.drain_events(timeout=1)
            assert conn.transport._delay == 0.2


# --------------------------------------------------------------------------
# Exchanges and bindings: rows every process routes by


def test_bindings_are_rows_until_unbound_or_their_queue_is_deleted(transactional_db):
    media = Exchange("media", "topic")
    with connect() as conn:
        channel = conn.default_channel
        Queue("videos", media, routing_key="media.video.#")(channel).declare()
        Queue("all_media", media, routing_key="media.#")(channel).declare()
        Queue("all_media", media, routing_key="media.#")(conn.channel()).declare()  # again: still one row
        channel.queue_bind("videos", "media", "media.clip.#")
        assert binding_rows() == {("media", "topic", "media.video.#", "videos"),
                                  ("media", "topic", "media.#", "all_media"),
                                  ("media", "topic", "media.clip.#", "videos")}

        channel.queue_unbind("videos", "media", "media.clip.#")
        assert ("media", "topic", "media.clip.#", "videos") not in binding_rows()
        conn.Producer().publish("clip", exchange="media", routing_key="media.clip.x")
        assert drain(channel, "videos") == [] and drain(channel, "all_media") == ["clip"]

        channel.queue_delete("videos")
        assert binding_rows() == {("media", "topic", "media.#", "all_media")}
        conn.Producer().publish("video", exchange="media", routing_key="media.video.hd")  # not to the deleted queue
        assert drain(channel, "videos") == [] and drain(channel, "all_media") == ["video"]

        channel.exchange_delete("media")
        assert not BrokerBinding.objects.exists()
    assert not BrokerMessage.objects.exists()


def test_a_queue_bound_by_another_process_exists_for_a_passive_declare(transactional_db):
    with connect() as worker, connect() as web:  # each connection keeps its own kombu state, as a process does
        Queue("reports", Exchange("reports"), routing_key="reports")(worker.default_channel).declare()
        declared = Queue("reports")(web.default_channel).queue_declare(passive=True)
        assert declared.queue == "reports" and declared.message_count == 0
        Exchange("reports", "direct")(web.default_channel).declare(passive=True)
        with pytest.raises(web.channel_errors, match="NOT_FOUND"):
            Exchange("nobody-declared-this")(web.default_channel).declare(passive=True)


def test_an_exchange_declared_as_another_type_is_refused(transactional_db):
    with connect() as worker, connect() as web:
        Queue("videos", Exchange("media", "topic"), routing_key="media.video.#")(worker.default_channel).declare()

        # Another process (its own kombu state) declares it as direct: AMQP's PRECONDITION_FAILED.
        mismatch = "exchange 'media' exists as topic, declared as direct"
        with pytest.raises(ExchangeTypeMismatch, match=mismatch) as caught:
            Exchange("media", "direct")(web.default_channel).declare()
        assert isinstance(caught.value, web.channel_errors)
        assert caught.value.reply_code == 406
        # The declaring process itself.
        with pytest.raises(ExchangeTypeMismatch, match="exchange 'media' exists as topic, declared as fanout"):
            Exchange("media", "fanout")(worker.default_channel).declare()

        # A process that declared "orders" as direct before anything was bound to it
        # cannot bind to it once another process has bound it as topic.
        Exchange("orders", "direct")(web.default_channel).declare()
        Queue("eu", Exchange("orders", "topic"), routing_key="orders.eu.*")(worker.default_channel).declare()
        with pytest.raises(ExchangeTypeMismatch, match="exchange 'orders' exists as topic, declared as direct"):
            web.default_channel.queue_bind("all-orders", "orders", "orders")
        with pytest.raises(web.channel_errors, match="COMMAND_INVALID"):
            Exchange("hdrs", "headers")(web.default_channel).declare()

    assert binding_rows() == {("media", "topic", "media.video.#", "videos"), ("orders", "topic", "orders.eu.*", "eu")}


def test_an_unroutable_publish_raises_names_exchange_and_key_and_inserts_nothing(transactional_db, caplog):
    with connect() as conn:
        Queue("videos", Exchange("media", "topic"), routing_key="media.video.#")(conn.default_channel).declare()
        producer = conn.Producer()
        with caplog.at_level(logging.WARNING), pytest.raises(
            Unroutable, match=r"no queue bound to exchange 'media' \(topic\) with key 'media\.audio'"
        ) as caught:
            producer.publish({"n": 1}, exchange="media", routing_key="media.audio")
        assert isinstance(caught.value, conn.channel_errors)
        assert "'media'" in caplog.text and "'media.audio'" in caplog.text
        assert caplog.records[-1].levelno == logging.WARNING

        with pytest.raises(Unroutable, match="exchange 'nowhere' .* with key 'x'"):  # an exchange nothing is bound to
            producer.publish({"n": 2}, exchange="nowhere", routing_key="x")
        # Publishing with retries (kombu's ensure): refused at once, not retried as a lost connection.
        started = time.monotonic()
        with pytest.raises(Unroutable):
            producer.publish({"n": 3}, exchange="media", routing_key="media.audio", retry=True,
                             retry_policy={"max_retries": 3, "interval_start": 1})
        assert time.monotonic() - started < 1
    assert not BrokerMessage.objects.exists()


def test_the_deadletter_queue_option_takes_unroutable_messages(transactional_db, caplog):
    with connect(deadletter_queue="unrouted") as conn, caplog.at_level(logging.WARNING):
        conn.Producer().publish("stray", exchange="nowhere", routing_key="x")
        assert drain(conn.default_channel, "unrouted") == ["stray"]
    assert "dead-letter queue 'unrouted'" in caplog.text


def test_another_connections_binding_is_seen_within_the_cache_ttl(transactional_db):
    news = Exchange("news", "fanout")
    with connect(binding_cache_ttl=0.5) as web, connect() as worker:
        Queue("a", news)(worker.default_channel).declare()
        producer = web.Producer()
        producer.publish("1", exchange="news")  # reads (and caches) the bindings of "news"
        Queue("b", news)(worker.default_channel).declare()
        producer.publish("2", exchange="news")  # within the TTL: the cached table
        time.sleep(0.6)
        producer.publish("3", exchange="news")
        Queue("c", news)(web.default_channel).declare()  # its own binding counts at once
        producer.publish("4", exchange="news")
        channel = worker.default_channel
        assert {queue: drain(channel, queue) for queue in "abc"} == {
            "a": ["1", "2", "3", "4"], "b": ["3", "4"], "c": ["4"]}


def test_a_binding_rolled_back_still_routes_in_the_declaring_process(transactional_db):
    with connect() as conn:
        with pytest.raises(RuntimeError), transaction.atomic():
            Queue("audit", Exchange("events", "topic"), routing_key="user.*")(conn.default_channel).declare()
            assert binding_rows() == {("events", "topic", "user.*", "audit")}
            raise RuntimeError
        assert not BrokerBinding.objects.exists()
        conn.Producer().publish("login", exchange="events", routing_key="user.login")
        assert drain(conn.default_channel, "audit") == ["login"]


def test_a_message_for_several_queues_is_inserted_into_all_or_none(transactional_db):
    news = Exchange("news", "fanout")
    with connect() as conn:
        channel = conn.default_channel
        for name in ("a", "b", "c"):
            Queue(name, news)(channel).declare()
        put, calls = channel._put, []

        def failing_put(queue, message, **kwargs):
            calls.append(queue)
            if len(calls) == 2:
                raise RuntimeError("the database went away mid-publish")
            put(queue, message, **kwargs)

        channel._put = failing_put
        with pytest.raises(RuntimeError):
            conn.Producer(channel).publish("x", exchange="news")
        assert calls == ["a", "b"] and not BrokerMessage.objects.exists()
        channel._put = put
        conn.Producer(channel).publish("y", exchange="news")
        assert sorted(BrokerMessage.objects.values_list("queue", flat=True)) == ["a", "b", "c"]
        assert len(set(BrokerMessage.objects.values_list("delivery_tag", flat=True))) == 3  # acked apart


def test_put_messages_inserts_a_batch_for_every_queue_it_routes_to(transactional_db):
    def message(n: int, priority: int) -> dict:
        body = base64.b64encode(json.dumps({"n": n}).encode()).decode()
        return {"body": body, "content-encoding": "utf-8", "content-type": "application/json", "headers": {},
                "properties": {"delivery_tag": uuid.uuid4().hex, "priority": priority, "body_encoding": "base64",
                               "delivery_info": {"exchange": "bulk", "routing_key": "bulk.a"}}}

    with connect() as conn:
        channel = conn.default_channel
        exchange = Exchange("bulk", "topic")
        for name in ("bulk-one", "bulk-two"):
            Queue(name, exchange, routing_key="bulk.#")(channel).declare()
        with CaptureQueriesContext(db_connection) as captured:
            assert channel.put_messages("bulk", "bulk.a", [message(0, 0), message(1, 5), message(2, 0)]) == 2
        assert [query["sql"].split()[0] for query in captured if "brokermessage" in query["sql"]] == ["INSERT"]
        assert BrokerMessage.objects.count() == 6
        assert len(set(BrokerMessage.objects.values_list("delivery_tag", flat=True))) == 6
        for name in ("bulk-one", "bulk-two"):
            assert drain(channel, name) == [{"n": 1}, {"n": 0}, {"n": 2}]  # priority, then FIFO
        with pytest.raises(Unroutable):
            channel.put_messages("bulk", "other.a", [message(3, 0)])
    assert not BrokerMessage.objects.exists()


def test_a_database_that_cannot_claim_safely_is_refused_with_the_reason(transactional_db, monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from django_tasks_q.broker.transport import django_claims

    monkeypatch.setattr(django_claims.sqlite3, "sqlite_version_info", (3, 31, 1))  # before UPDATE ... RETURNING
    with connect() as conn, pytest.raises(ImproperlyConfigured, match=r"SQLite 3\.35\.0 or later.*is SQLite 3\.31\.1"):
        conn.default_channel


def test_fanout_is_advertised():
    with connect() as conn:
        assert conn.supports_exchange_type("fanout") and conn.supports_exchange_type("topic")


# --------------------------------------------------------------------------
# Several processes on one database

AGENT = r'''
"""One party of a django:// multi-process test: python agent.py ROLE ARGS..."""
import glob, json, os, socket, sys, time

import django

django.setup()
from django.db import connection
from kombu import Connection, Queue

from django_tasks_q.broker.transport.django import register

register()
OPTIONS = json.loads(os.environ.get("TQ_TRANSPORT_OPTIONS", "{}"))
if os.environ.get("TQ_CLAIMS") == "locked":  # the claims MySQL 8 and Oracle make, on this database
    from django_tasks_q.broker.transport.django_claims import ClaimsMixin

    init_claims = ClaimsMixin._init_claims

    def locked_claims(self):
        init_claims(self)
        self._claim_rows = self._claim_locked

    ClaimsMixin._init_claims = locked_claims


def connect():
    return Connection("django://", transport_options=OPTIONS)


def publish(name, count):
    queue = Queue(name, routing_key=name)
    with connect() as conn:
        producer = conn.Producer()
        for n in range(int(count)):
            producer.publish({"n": n}, routing_key=name, declare=[queue] if n == 0 else [])
    print("published", count, flush=True)


def keep_pace(out, budget):
    """Wait (at most `budget` seconds in all) while this consumer is 100+ bytes of output ahead of the slowest one
    still running: on a loaded machine one process can be descheduled for the whole drain, and the test is about
    several consumers claiming from one queue at once, not about the scheduler."""
    siblings = [path for path in glob.glob(os.path.join(os.path.dirname(out), "consumer-*.txt")) if path != out]
    while budget[0] > 0:
        running = [os.path.getsize(path) for path in siblings if not os.path.exists(path + ".done")]
        if not running or os.path.getsize(out) <= min(running) + 100:
            return
        time.sleep(0.01)
        budget[0] -= 0.01


def consume(name, out, go, kill_backend_after="0", prefetch="1"):
    """Ack everything from queue `name` until it has been idle for 2 s; record bodies in `out`."""
    kill_after = int(kill_backend_after)
    seen = open(out, "w")
    acked = []
    pacing_budget = [30.0]

    def on_message(body, message):
        seen.write(f"{body['n']}\n")
        seen.flush()
        message.ack()
        acked.append(body["n"])
        keep_pace(out, pacing_budget)
        if len(acked) == kill_after:
            import psycopg  # the database drops this process's connection under it

            pid = connection.connection.info.backend_pid
            with psycopg.connect(os.environ["TESTPROJECT_DATABASE_URL"], autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            print("terminated backend", pid, flush=True)

    with connect() as conn, conn.Consumer(Queue(name, routing_key=name), callbacks=[on_message],
                                   prefetch_count=int(prefetch)):
        open(out + ".ready", "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 2:
            try:
                conn.drain_events(timeout=0.2)
                idle_since = time.monotonic()
            except socket.timeout:
                pass
    open(out + ".done", "w").close()


def hold(name):
    """Take one message and keep it unacked without draining again, until killed."""
    held = []
    with connect() as conn, conn.Consumer(Queue(name, routing_key=name), callbacks=[lambda b, m: held.append(m)]):
        while not held:
            try:
                conn.drain_events(timeout=1)
            except socket.timeout:
                pass
        print("held", json.dumps(held[0].payload), flush=True)
        while True:  # busy elsewhere: only the keeper thread keeps the claim
            time.sleep(1)


def probe(name, seconds):
    """Try to take a message for `seconds`; print what was got (acked) or null."""
    from django_tasks_q.models import BrokerMessage

    with connect() as conn:
        channel = conn.default_channel
        started = time.monotonic()
        while time.monotonic() - started < float(seconds):
            message = channel.basic_get(name)
            if message is not None:
                message.ack()
                result = {"payload": message.payload, "redelivered": bool(message.delivery_info.get("redelivered")),
                          "after": time.monotonic() - started, "rows_left": BrokerMessage.objects.count()}
                print(json.dumps(result), flush=True)
                return
            time.sleep(0.02)
    print("null", flush=True)


def count():
    from django_tasks_q.models import BrokerMessage

    print(BrokerMessage.objects.count(), flush=True)


def bind_consume(out, stop, exchange, exchange_type, *bindings):
    """Bind each QUEUE=KEY to `exchange` and consume them; write 'QUEUE BODY' lines to `out` until `stop` exists."""
    from kombu import Exchange

    record = open(out, "w")

    def recorder(queue):
        def on_message(body, message):
            record.write(f"{queue} {body}\n")
            record.flush()
            message.ack()
        return on_message

    declared = Exchange(exchange, exchange_type)
    with connect() as conn:
        consumers = [conn.Consumer(Queue(name, declared, routing_key=key), callbacks=[recorder(name)])
                     for name, _, key in (binding.partition("=") for binding in bindings)]
        for consumer in consumers:
            consumer.consume()
        print("ready", flush=True)
        while not os.path.exists(stop):
            try:
                conn.drain_events(timeout=0.2)
            except socket.timeout:
                pass


def explain_claim(parked, ready, analyze):
    """Claim from `ready` rows among `parked` others (the table analyzed first, or never); print how many
    were claimed and the plans used."""
    from datetime import timedelta

    from django.utils import timezone

    with connection.cursor() as cursor:
        for count, visible_at in ((parked, "now() + interval '1 day'"), (ready, "NULL")):
            cursor.execute("INSERT INTO django_tasks_q_brokermessage (queue, payload, priority, delivery_tag, "
                           f"visible_at, delivery_count, created_at) SELECT 'plan', repeat('x', 1000), 0, "
                           f"'plan-' || n || '-' || %s, {visible_at}, 0, now() FROM generate_series(1, %s) AS n",
                           [visible_at, int(count)])
        if analyze == "analyze":
            cursor.execute("ANALYZE django_tasks_q_brokermessage")
        plans = []
        connection.connection.add_notice_handler(lambda notice: plans.append(notice.message_primary))
        for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_nested_statements = on", "SET client_min_messages = log"):
            cursor.execute(setting)
    with connect() as conn:
        now = timezone.now()
        claimed = conn.default_channel._claim_rows("plan", now, now + timedelta(seconds=60), 16)
    print(json.dumps({"claimed": len(claimed), "plans": plans}), flush=True)


role, *args = sys.argv[1:]
{"publish": publish, "consume": consume, "hold": hold, "probe": probe, "count": count,
 "bind_consume": bind_consume, "explain_claim": explain_claim}[role](*args)
'''


class Agents:
    """Runs agent subprocesses against one shared database."""

    def __init__(self, tmp_path: Path, database_env: dict[str, str], migrate: bool = True, **options):
        self.tmp_path = tmp_path
        self.script = tmp_path / "agent.py"
        self.script.write_text(AGENT)
        env = {k: v for k, v in os.environ.items() if k not in ("TESTPROJECT_SQLITE", "TESTPROJECT_DATABASE_URL")}
        self.env = {**env, **database_env, "DJANGO_SETTINGS_MODULE": "testproject.settings",
                    "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                    "TQ_TRANSPORT_OPTIONS": json.dumps(options)}
        self.processes: list[subprocess.Popen] = []
        if not migrate:
            return
        migrate = subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--run-syncdb", "-v0"],
                                 cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([sys.executable, str(self.script), *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"agent {args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "w")
        process = subprocess.Popen([sys.executable, str(self.script), *args], cwd=ROOT, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process.log_path = log.name
        self.processes.append(process)
        return process

    def wait_for_line(self, process: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in Path(process.log_path).read_text().splitlines():
                if line.startswith(prefix):
                    return line
            assert process.poll() is None, f"agent exited:\n{Path(process.log_path).read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"no {prefix!r} within {timeout}s:\n{Path(process.log_path).read_text()}")

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def sqlite_agents(tmp_path):
    def make(**options) -> Agents:
        agents = Agents(tmp_path, {"TESTPROJECT_SQLITE": str(tmp_path / "shared.sqlite3")}, **options)
        made.append(agents)
        return agents

    made: list[Agents] = []
    yield make
    for agents in made:
        agents.stop_all()


@pytest.fixture
def postgres_agents(tmp_path, postgres_url):
    def make(**options) -> Agents:
        url = servers.create_database(postgres_url, f"tq_transport_{uuid.uuid4().hex[:12]}")
        agents = Agents(tmp_path, {"TESTPROJECT_DATABASE_URL": url}, **options)
        made.append(agents)
        return agents

    made: list[Agents] = []
    yield make
    for agents in made:
        agents.stop_all()


def drain_with_consumers(agents: Agents, total: int, consumers: int, kill_backend_after: int = 0,
                         prefetch: int = 1) -> list[Counter]:
    agents.run("publish", "work", str(total))
    go = agents.tmp_path / "go"
    outs = [agents.tmp_path / f"consumer-{i}.txt" for i in range(consumers)]
    kill_after = [kill_backend_after] + [0] * (consumers - 1)  # only consumer 0 loses its connection
    procs = [
        agents.start("consume", "work", str(out), str(go), str(kill_after[i]), str(prefetch), name=f"consumer-{i}")
        for i, out in enumerate(outs)
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{out}.ready").exists() for out in outs):  # start them together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            Path(p.log_path).read_text() for p in procs
        ]
        time.sleep(0.05)
    go.touch()
    for process in procs:
        assert process.wait(timeout=300) == 0, Path(process.log_path).read_text()
    return [Counter(int(line) for line in out.read_text().split()) for out in outs]


def assert_each_delivered_once(per_consumer: list[Counter], total: int) -> None:
    together = sum(per_consumer, Counter())
    twice = {n: c for n, c in together.items() if c > 1}
    assert not twice, f"delivered more than once: {twice}"
    assert set(together) == set(range(total)), f"missing: {sorted(set(range(total)) - set(together))[:20]}"
    assert all(per_consumer), f"a consumer got nothing: {[sum(c.values()) for c in per_consumer]}"


@pytest.mark.parametrize("prefetch", [1, 8])  # 8: claims of up to 8 rows at a time
def test_consumer_processes_share_a_queue_on_sqlite(sqlite_agents, prefetch):
    agents = sqlite_agents()
    per_consumer = drain_with_consumers(agents, total=600, consumers=3, prefetch=prefetch)
    assert_each_delivered_once(per_consumer, 600)
    assert agents.run("count").strip() == "0"


@pytest.mark.postgres
@pytest.mark.parametrize("claims, prefetch", [("returning", 1), ("returning", 8), ("locked", 8)])
def test_consumer_processes_share_a_queue_on_postgres(postgres_agents, claims, prefetch):
    agents = postgres_agents()
    agents.env["TQ_CLAIMS"] = claims  # locked: the SELECT ... FOR UPDATE SKIP LOCKED + UPDATE of MySQL and Oracle
    # Consumer 0 has its database connection terminated after 100 messages and carries on.
    per_consumer = drain_with_consumers(agents, total=600, consumers=3, kill_backend_after=100, prefetch=prefetch)
    assert_each_delivered_once(per_consumer, 600)
    assert "terminated backend" in Path(agents.processes[0].log_path).read_text()
    assert agents.run("count").strip() == "0"


@pytest.mark.postgres
@pytest.mark.parametrize("parked, ready, statistics", [(100_000, 10_000, "never"), (0, 60_000, "analyze")])
def test_a_claim_reads_only_the_rows_it_claims_whatever_the_statistics(postgres_agents, parked, ready,
                                                                       statistics):
    """Before autovacuum analyzes a large fill, the planner guesses a handful of ready rows and would sort
    them all on every claim; the claim function forbids the sort (migration 0001_initial), and looks the claimed rows
    up by key (joined to the subquery, they were found by reading the whole table)."""
    agents = postgres_agents()
    result = json.loads(agents.run("explain_claim", str(parked), str(ready), statistics).strip().splitlines()[-1])
    assert result["claimed"] == 16
    claim_plans = [plan for plan in result["plans"] if "brokermessage" in plan and "LockRows" in plan]
    assert claim_plans, result["plans"]
    for plan in claim_plans:  # the ready rows in index order, then each claimed row by its key: no row read twice
        assert "Index Scan using tasks_q_message_ready" in plan and "brokermessage_pkey" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan and "Bitmap" not in plan, plan


def _held_message_survives_its_holder_only(agents: Agents) -> None:
    # The holder (no prefetch limit) claims all three and is handed the first: the two claimed and not yet
    # delivered are kept alive with it and come back with it too.
    agents.run("publish", "held", "3")
    holder = agents.start("hold", "held", name="holder")
    assert agents.wait_for_line(holder, "held") == 'held {"n": 0}'

    # Alive (not draining): 3 visibility timeouts pass and nobody else gets any of the three.
    assert agents.run("probe", "held", "3").strip() == "null"

    os.kill(holder.pid, signal.SIGKILL)  # dies without ack or restore
    holder.wait()
    result = json.loads(agents.run("probe", "held", "10").strip())
    assert result["payload"] == {"n": 0}
    assert result["redelivered"] is True
    assert result["after"] < 3  # about one visibility timeout after the kill
    assert result["rows_left"] == 2


def test_dead_consumers_message_comes_back_on_sqlite(sqlite_agents):
    _held_message_survives_its_holder_only(sqlite_agents(visibility_timeout=1.0))


@pytest.mark.postgres
def test_dead_consumers_message_comes_back_on_postgres(postgres_agents):
    _held_message_survives_its_holder_only(postgres_agents(visibility_timeout=1.0))


# --------------------------------------------------------------------------
# Bindings across processes: consumers in subprocesses bind, this process publishes


@pytest.fixture
def peers(transactional_db, tmp_path):
    """Agents on this test process's own database, so it publishes and they consume."""
    url = os.environ.get("TESTPROJECT_DATABASE_URL")
    database_env = ({"TESTPROJECT_DATABASE_URL": url} if url
                    else {"TESTPROJECT_SQLITE": db_connection.settings_dict["NAME"]})
    agents = Agents(tmp_path, database_env, migrate=False)
    yield agents
    agents.stop_all()


def received_by(outs: list[Path], total: int, stop: Path, processes: list[subprocess.Popen]) -> Counter:
    """(queue, body) pairs the consumers recorded, once ``total`` arrived and nothing more came for 0.5 s."""
    def read() -> Counter:
        return Counter(tuple(line.split(" ", 1)) for out in outs for line in out.read_text().splitlines())

    deadline = time.monotonic() + 60
    while sum(read().values()) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # anything extra would show up by now
    stop.touch()
    for process in processes:
        assert process.wait(timeout=30) == 0, Path(process.log_path).read_text()
    return read()


#: Binding keys of the topic test, by queue; two consumer processes declare them.
TOPIC_BINDINGS = {"videos": "media.video.#", "all_media": "media.#", "media_items": "media.*"}
#: Where AMQP routes each routing key with those bindings.
TOPIC_ROUTES = {
    "media.video": {"videos", "all_media", "media_items"},  # '#' matches zero words; '*' matches "video"
    "media.video.hd": {"videos", "all_media"},  # '*' is exactly one word
    "media.image": {"all_media", "media_items"},
}


def test_topic_bindings_of_other_processes_route_this_ones_publishes(peers, tmp_path):
    stop, outs = tmp_path / "stop", [tmp_path / "one.txt", tmp_path / "two.txt"]
    one = peers.start("bind_consume", str(outs[0]), str(stop), "media", "topic",
                      f"videos={TOPIC_BINDINGS['videos']}", f"all_media={TOPIC_BINDINGS['all_media']}", name="one")
    two = peers.start("bind_consume", str(outs[1]), str(stop), "media", "topic",
                      f"media_items={TOPIC_BINDINGS['media_items']}", name="two")
    for process in (one, two):
        peers.wait_for_line(process, "ready")
    assert binding_rows() == {("media", "topic", key, queue) for queue, key in TOPIC_BINDINGS.items()}

    with connect() as conn:
        producer = conn.Producer()
        for routing_key in TOPIC_ROUTES:
            producer.publish(routing_key, exchange="media", routing_key=routing_key)
        assert "media" not in conn.transport.state.exchanges  # this process declared nothing

    expected = Counter((queue, routing_key) for routing_key, queues in TOPIC_ROUTES.items() for queue in queues)
    assert received_by(outs, sum(expected.values()), stop, [one, two]) == expected
    assert not BrokerMessage.objects.exists()


def test_fanout_gives_one_copy_to_each_queue_whichever_process_bound_it(peers, tmp_path):
    stop, outs = tmp_path / "stop", [tmp_path / "inbox-1.txt", tmp_path / "inbox-2.txt"]
    inboxes = [peers.start("bind_consume", str(out), str(stop), "broadcast", "fanout", f"{out.stem}=", name=out.stem)
               for out in outs]
    for process in inboxes:
        peers.wait_for_line(process, "ready")

    with connect() as conn:
        producer = conn.Producer()
        for body in ("first", "second"):
            producer.publish(body, exchange="broadcast", routing_key="any-key")

    expected = Counter((queue, body) for queue in ("inbox-1", "inbox-2") for body in ("first", "second"))
    assert received_by(outs, 4, stop, inboxes) == expected
    assert not BrokerMessage.objects.exists()
