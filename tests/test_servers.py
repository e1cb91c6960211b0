"""The session servers are real and reachable."""

import socket
import time
import uuid

import psycopg
import redis
from kombu import Connection, Exchange, Queue

from tests.servers import create_database, free_port


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_answers_ping(redis_url):
    assert redis_url.startswith("redis://127.0.0.1:") and redis_url.endswith("/0")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        client.set("tasks-q:probe", b"1")
        assert client.get("tasks-q:probe") == b"1"
    finally:
        client.close()


def test_amqp_publish_get_round_trip(amqp_url):
    assert amqp_url.startswith("amqp://guest:guest@127.0.0.1:") and amqp_url.endswith("//")
    name = f"tasks-q-probe-{uuid.uuid4().hex}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name, auto_delete=True)
    with Connection(amqp_url, connect_timeout=10) as conn:
        conn.ensure_connection(max_retries=3)
        with conn.Producer() as producer:
            producer.publish({"hello": "world"}, exchange=queue.exchange, routing_key=name,
                             declare=[queue], serializer="json")
        bound = queue(conn.default_channel)
        message = None
        for _ in range(50):
            message = bound.get(no_ack=False)
            if message is not None:
                break
            time.sleep(0.1)  # the publish may not be routed yet
        assert message is not None
        assert message.payload == {"hello": "world"}
        message.ack()
        bound.delete()


def test_postgres_select_one(postgres_url):
    assert postgres_url.startswith("postgres://postgres@127.0.0.1:") and postgres_url.endswith("/postgres")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_create_database(postgres_url):
    url = create_database(postgres_url, "tasks_q_probe")
    assert url.endswith("/tasks_q_probe")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("tasks_q_probe",)
        conn.execute("CREATE TABLE t (x int)")
    # "fresh": creating it again gives an empty database.
    url = create_database(postgres_url, "tasks_q_probe")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() == (0,)
