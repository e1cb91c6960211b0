"""The ``django://`` kombu transport against a real database.

In-process tests use pytest-django's database (autocommit, ``transactional_db``).
The multi-process tests run every party -- publisher, consumers, prober -- as
subprocesses of an agent script (``AGENT`` below) on a database they share: a
SQLite file, or a fresh PostgreSQL database from the ``postgres_url`` fixture.
"""

from __future__ import annotations

import json
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
from django.db import transaction
from django.utils import timezone
from kombu import Connection, Queue

from django_tasks_q.broker.transport.django import Transport, register
from django_tasks_q.models import BrokerMessage
from tests import servers

ROOT = Path(__file__).resolve().parent.parent

register()


def connect(**options) -> Connection:
    return Connection("django://", transport_options=options)


def bodies(messages) -> list:
    return [message.payload for message in messages]


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
        queue = conn.SimpleQueue("reject")
        queue.put("kept")
        queue.put("dropped")

        first = queue.get(timeout=1)
        first.requeue()
        row = BrokerMessage.objects.get(delivery_tag=first.delivery_tag)
        assert row.reserved_until is None
        assert BrokerMessage.objects.count() == 2

        again = queue.get(timeout=1)  # keeps its place at the head of the queue
        assert again.payload == "kept"
        assert again.delivery_info["redelivered"] is True
        assert again.headers["redelivered"] is True

        second = queue.get(timeout=1)
        assert second.payload == "dropped"
        second.reject()
        assert list(BrokerMessage.objects.values_list("delivery_tag", flat=True)) == [again.delivery_tag]
        again.ack()
        assert not BrokerMessage.objects.exists()
        queue.close()


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


def test_visible_at_in_the_future_is_not_delivered(transactional_db):
    with connect() as conn:
        conn.SimpleQueue("later").put("x")
        BrokerMessage.objects.update(visible_at=timezone.now() + timedelta(hours=1))
        assert conn.default_channel.basic_get("later") is None
        BrokerMessage.objects.update(visible_at=timezone.now() - timedelta(seconds=1))
        assert conn.default_channel.basic_get("later", no_ack=True).payload == "x"


def test_idle_polling_backs_off_without_busy_looping(transactional_db, django_assert_max_num_queries):
    with connect(polling_interval=0.2) as conn:
        with conn.Consumer(Queue("idle", routing_key="idle"), callbacks=[]):
            # 1 s idle: 5, 10, 20, 40, 80, 160, then 200 ms sleeps -- about a dozen polls.
            with django_assert_max_num_queries(16), pytest.raises(socket.timeout):
                conn.drain_events(timeout=1)
            assert conn.transport._delay == 0.2


# --------------------------------------------------------------------------
# Several processes on one database

AGENT = r'''
"""One party of a django:// multi-process test: python agent.py ROLE ARGS..."""
import json, os, socket, sys, time

import django

django.setup()
from django.db import connection
from kombu import Connection, Queue

from django_tasks_q.broker.transport.django import register

register()
OPTIONS = json.loads(os.environ.get("TQ_TRANSPORT_OPTIONS", "{}"))


def connect():
    return Connection("django://", transport_options=OPTIONS)


def publish(name, count):
    queue = Queue(name, routing_key=name)
    with connect() as conn:
        producer = conn.Producer()
        for n in range(int(count)):
            producer.publish({"n": n}, routing_key=name, declare=[queue] if n == 0 else [])
    print("published", count, flush=True)


def consume(name, out, go, kill_backend_after="0"):
    """Ack everything from queue `name` until it has been idle for 2 s; record bodies in `out`."""
    kill_after = int(kill_backend_after)
    seen = open(out, "w")
    acked = []

    def on_message(body, message):
        seen.write(f"{body['n']}\n")
        seen.flush()
        message.ack()
        acked.append(body["n"])
        if len(acked) == kill_after:
            import psycopg  # the database drops this process's connection under it

            pid = connection.connection.info.backend_pid
            with psycopg.connect(os.environ["TESTPROJECT_DATABASE_URL"], autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            print("terminated backend", pid, flush=True)

    with connect() as conn, conn.Consumer(Queue(name, routing_key=name), callbacks=[on_message], prefetch_count=1):
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


role, *args = sys.argv[1:]
{"publish": publish, "consume": consume, "hold": hold, "probe": probe, "count": count}[role](*args)
'''


class Agents:
    """Runs agent subprocesses against one shared database."""

    def __init__(self, tmp_path: Path, database_env: dict[str, str], **options):
        self.tmp_path = tmp_path
        self.script = tmp_path / "agent.py"
        self.script.write_text(AGENT)
        env = {k: v for k, v in os.environ.items() if k not in ("TESTPROJECT_SQLITE", "TESTPROJECT_DATABASE_URL")}
        self.env = {**env, **database_env, "DJANGO_SETTINGS_MODULE": "testproject.settings",
                    "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                    "TQ_TRANSPORT_OPTIONS": json.dumps(options)}
        self.processes: list[subprocess.Popen] = []
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


def drain_with_consumers(agents: Agents, total: int, consumers: int, kill_backend_after: int = 0) -> list[Counter]:
    agents.run("publish", "work", str(total))
    go = agents.tmp_path / "go"
    outs = [agents.tmp_path / f"consumer-{i}.txt" for i in range(consumers)]
    kill_after = [kill_backend_after] + [0] * (consumers - 1)  # only consumer 0 loses its connection
    procs = [
        agents.start("consume", "work", str(out), str(go), str(kill_after[i]), name=f"consumer-{i}")
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


def test_consumer_processes_share_a_queue_on_sqlite(sqlite_agents):
    agents = sqlite_agents()
    per_consumer = drain_with_consumers(agents, total=600, consumers=3)
    assert_each_delivered_once(per_consumer, 600)
    assert agents.run("count").strip() == "0"


@pytest.mark.postgres
def test_consumer_processes_share_a_queue_on_postgres(postgres_agents):
    agents = postgres_agents()
    # Consumer 0 has its database connection terminated after 100 messages and carries on.
    per_consumer = drain_with_consumers(agents, total=600, consumers=3, kill_backend_after=100)
    assert_each_delivered_once(per_consumer, 600)
    assert "terminated backend" in Path(agents.processes[0].log_path).read_text()
    assert agents.run("count").strip() == "0"


def _held_message_survives_its_holder_only(agents: Agents) -> None:
    agents.run("publish", "held", "1")
    holder = agents.start("hold", "held", name="holder")
    assert agents.wait_for_line(holder, "held") == 'held {"n": 0}'

    # Alive (not draining): 3 visibility timeouts pass and nobody else gets it.
    assert agents.run("probe", "held", "3").strip() == "null"

    os.kill(holder.pid, signal.SIGKILL)  # dies without ack or restore
    holder.wait()
    result = json.loads(agents.run("probe", "held", "10").strip())
    assert result["payload"] == {"n": 0}
    assert result["redelivered"] is True
    assert result["after"] < 3  # about one visibility timeout after the kill
    assert result["rows_left"] == 0


def test_dead_consumers_message_comes_back_on_sqlite(sqlite_agents):
    _held_message_survives_its_holder_only(sqlite_agents(visibility_timeout=1.0))


@pytest.mark.postgres
def test_dead_consumers_message_comes_back_on_postgres(postgres_agents):
    _held_message_survives_its_holder_only(postgres_agents(visibility_timeout=1.0))
