"""Our ``redis://`` channel against a real Redis: parking and kept reservations."""

from __future__ import annotations

import socket
import time

import redis
from kombu import Connection, Consumer, Producer, Queue

from django_tasks_q.broker.delayed import PARK_HEADER, REDIS_KEY
from django_tasks_q.broker.transport.redis import Transport

# an idle consumer sweeps for overdue unacked messages on every poll
QUICK = {"visibility_timeout": 1, "unacked_restore_throttle": 1}


def connect(url: str) -> Connection:
    connection = Connection(url, transport_options=QUICK)
    connection.transport_cls = Transport
    return connection


def drain(connection: Connection, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            connection.drain_events(timeout=0.3)
        except socket.timeout:
            pass


def test_a_live_consumer_keeps_its_unacked_message_past_the_visibility_timeout(redis_url):
    """kombu alone gives the message to the idle consumer after 1 s; the keeper stops that."""
    queue = Queue("kept")
    got: dict[str, list] = {"holder": [], "idle": []}
    with connect(redis_url) as holder, connect(redis_url) as idle:
        Producer(holder.channel()).publish({"n": 1}, routing_key="kept", declare=[queue])
        Consumer(holder.channel(), [queue], on_message=got["holder"].append).consume()
        holder.drain_events(timeout=2)
        assert len(got["holder"]) == 1
        Consumer(idle.channel(), [queue], on_message=got["idle"].append).consume()
        drain(idle, 4)  # four visibility timeouts
        assert got["idle"] == [], "a live holder's message was handed to another consumer"

        holder.transport.stop_keeping_claims()  # now the holder is as good as dead
        drain(idle, 4)
        assert len(got["idle"]) == 1 and got["idle"][0].payload == {"n": 1}


def test_parked_messages_move_to_their_list_once_when_due(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.delete(REDIS_KEY)
    with connect(redis_url) as one, connect(redis_url) as two:
        simple = one.SimpleQueue("parked")
        simple.put("soon", headers={PARK_HEADER: time.time() + 3})
        simple.put("week", headers={PARK_HEADER: time.time() + 7 * 86400}, priority=9)
        simple.put("now", headers={PARK_HEADER: time.time()})  # due already: straight to the list
        assert client.zcard(REDIS_KEY) == 2
        assert simple.get(timeout=1).payload == "now"
        assert one.default_channel.release_parked() == 0
        time.sleep(1.2)
        # two channels race to release: the script's ZREM lets only one move each member
        assert one.default_channel.release_parked() + two.default_channel.release_parked() == 1
        message = simple.get(timeout=1)
        assert message.payload == "soon"
        message.ack()
        assert client.llen("parked") == 0 and client.zcard(REDIS_KEY) == 1
        simple.close()
    client.delete(REDIS_KEY)
