"""Our ``redis://`` channel against a real Redis: parking, kept reservations, takes and early acks."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue

from django_tasks_q.broker.delayed import PARK_HEADER, REDIS_KEY
from django_tasks_q.broker.transport.redis import Transport
from django_tasks_q.broker.transport.redis_sends import resp

# an idle consumer sweeps for overdue unacked messages on every poll
QUICK = {"visibility_timeout": 1, "unacked_restore_throttle": 1}
# a take goes out behind a wait (BRPOP) shorter than a sixth of the visibility timeout: 1 s of 60
TAKE_BEHIND = {"visibility_timeout": 60}
# ... or 0.1 s of QUICK's 1 s, where a restore sweep must come by within the test
SHORT_WAITS = {"brpop_timeout": 0.1}


def connect(url: str, brpop_timeout: float | None = None, **options) -> Connection:
    connection = Connection(url, transport_options={**QUICK, **options})
    connection.transport_cls = Transport
    if brpop_timeout:
        connection.transport.brpop_timeout = brpop_timeout
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


def replied(sock: socket.socket, wait: float = 0.3) -> bool:
    """Has the server written anything to ``sock`` that is not read yet?"""
    return bool(select.select([sock], [], [], wait)[0])


def test_early_acks_get_no_reply_and_apply_in_order(redis_url):
    """Writes that do not wait go out under CLIENT REPLY OFF: nothing comes back to be left unread (a
    worker killed then would reset the connection, and Redis could drop the writes it had not read);
    they apply in order, and the next call that waits reads its own reply."""
    with connect(redis_url) as connection:
        channel = connection.default_channel
        channel.raw.call(resp("SET", "quiet", 1), 1, wait=False)
        channel.raw.call(resp("INCR", "quiet"), 1, wait=False)
        assert not replied(channel.raw.connection._sock), "Redis replied to a write that does not wait"
        assert channel.raw.call(resp("GET", "quiet"), 1) == [b"2"]
        assert channel.raw.call(resp("INCR", "quiet"), 1) == [3]
        channel.raw.call(resp("INCR", "quiet"), 1, wait=False)  # quiet again after a call that waited
        assert not replied(channel.raw.connection._sock)
        assert channel.raw.call(resp("GET", "quiet"), 1) == [b"4"]


def test_early_acks_reach_redis_with_the_next_call_that_waits(redis_url):
    """The kernel holds quiet writes (MSG_MORE) until the next call that waits: Redis reads a batch
    of acks and the take after them at once, instead of being woken for every ack."""
    client = redis.Redis.from_url(redis_url)
    with connect(redis_url) as connection:
        channel = connection.default_channel
        channel.raw.call(resp("PING"), 1)  # connected and probed
        before = client.info("stats")["total_reads_processed"]
        for _ in range(10):
            channel.raw.call(resp("INCR", "held"), 1, wait=False)
            time.sleep(0.002)  # long enough for Redis to read each write on its own, were it sent
        assert channel.raw.call(resp("GET", "held"), 1) == [b"10"]
        reads = client.info("stats")["total_reads_processed"] - before  # the GET's and this INFO's: 2
        assert reads <= 4, f"Redis read {reads} times for 10 held writes and a GET: each write woke it"


def test_a_held_early_ack_lands_without_a_later_call(redis_url):
    """A task that runs long after its ack makes no further call: the held write still reaches
    Redis on its own, within the kernel's probe timer (about 0.2 s)."""
    client = redis.Redis.from_url(redis_url)
    with connect(redis_url) as connection:
        channel = connection.default_channel
        channel.raw.call(resp("PING"), 1)
        channel.raw.call(resp("SET", "alone", 1), 1, wait=False)
        deadline = time.monotonic() + 2
        while client.get("alone") is None:
            assert time.monotonic() < deadline, "a held ack had not reached Redis 2 s later"
            time.sleep(0.01)


KILLED_AFTER_QUIET_WRITES = """
import os, signal, sys
from kombu import Connection
from django_tasks_q.broker.transport.redis import Transport
from django_tasks_q.broker.transport.redis_sends import resp
connection = Connection(sys.argv[1])
connection.transport_cls = Transport
channel = connection.default_channel
channel.raw.call(resp("PING"), 1)
for _ in range(5):
    channel.raw.call(resp("INCR", "killed"), 1, wait=False)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_held_early_acks_land_when_the_process_is_killed(redis_url):
    """SIGKILL right after the acks: the kernel closes the socket and sends what it held, then the FIN."""
    client = redis.Redis.from_url(redis_url)
    client.delete("killed")
    child = subprocess.run([sys.executable, "-c", KILLED_AFTER_QUIET_WRITES, redis_url], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    deadline = time.monotonic() + 2
    while client.get("killed") != b"5":
        assert time.monotonic() < deadline, f"acks lost with the killed process: {client.get('killed')!r} of 5"
        time.sleep(0.01)


def test_without_client_reply_one_early_ack_is_in_flight_at_a_time(redis_without_client_reply):
    with connect(redis_without_client_reply) as connection:
        channel = connection.default_channel
        channel.raw.call(resp("SET", "owed", 1), 1, wait=False)
        assert replied(channel.raw.connection._sock), "the reply is owed, to be read before the next write"
        channel.raw.call(resp("INCR", "owed"), 1, wait=False)  # read the SET's reply first, then wrote
        sock = channel.raw.connection._sock
        assert replied(sock) and channel.raw.pending == 1
        assert sock.recv(64, socket.MSG_PEEK) == b":2\r\n", "more than the last write's reply was owed"
        assert channel.raw.call(resp("GET", "owed"), 1) == [b"2"]


@pytest.mark.parametrize("server", ["redis_url", "redis_without_client_reply"])
def test_consumer_takes_back_to_back_and_its_acks_land(server, request):
    """Back-to-back takes go out at once (no PING round trip first); a flushed script cache is
    loaded again mid-stream; every acked message leaves the unacked hash and index."""
    url = request.getfixturevalue(server)
    client = redis.Redis.from_url(url)
    queue = Queue("taken")
    got: list = []

    def on_message(message):
        got.append(message.payload)
        message.ack()

    with connect(url) as connection:
        producer = Producer(connection.channel())
        for n in range(30):
            producer.publish({"n": n}, routing_key="taken", declare=[queue])
        channel = connection.channel()
        channel.basic_qos(0, 4, False)
        Consumer(channel, [queue], on_message=on_message).consume()
        connection.drain_events(timeout=2)  # the first take and acks (and the connections' set-up)
        client.config_resetstat()
        while len(got) < 15:
            connection.drain_events(timeout=2)
        takes = client.info("commandstats")["cmdstat_evalsha"]["calls"]
        pings = client.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
        assert takes >= 2 and pings == 0, f"{pings} PINGs for {takes} takes: a round trip before each take"
        client.script_flush()  # as a new or restarted Redis would have it
        drain(connection, 1.5)
        assert [item["n"] for item in got] == list(range(30))
        channel.raw.close(settle=True)  # quiet acks have no reply: Redis reads them after the close
        wait_for(lambda: client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0, "an ack did not land")


def test_the_take_records_what_kombu_would_and_sets_aside_what_is_not_a_message(redis_url):
    """The take script's unacked record is kombu's ``[message, exchange, routing_key]`` under the
    message's own tag, whatever the order of the envelope's members. A list entry that is not a
    kombu message goes to the raw dead list byte for byte -- also one that Redis's decoder took and
    Python's or kombu's cannot (nested deeper than Python's recursion limit, a ``__type__`` kombu
    cannot revive, a body its encoding cannot decode), whose record is dropped: each used to escape
    the take, and stop its batch, every time it came back."""
    client = redis.Redis.from_url(redis_url)
    client.delete("tasksq.dead.raw")
    queue = Queue("shapes")
    records: list = []
    got: list = []

    def on_message(message):
        records.append((json.loads(client.hget("unacked", message.delivery_tag)), message.delivery_tag))
        got.append(message.payload)
        message.ack()

    with connect(redis_url) as connection:
        producer = Producer(connection.channel())
        producer.publish({"n": 1}, routing_key="shapes", declare=[queue])
        key = next(k for k in client.keys("shapes*") if client.type(k) == b"list")
        kombus = json.loads(client.lindex(key, 0))
        reordered = {"properties": {**kombus["properties"], "delivery_tag": "reordered-tag"},
                     **{k: v for k, v in kombus.items() if k != "properties"}}
        client.lpush(key, json.dumps(reordered))  # properties first: decoded whole
        client.lpush(key, b"\xff not json")
        deep = (b'{"headers": {"x": ' + b"[" * 995 + b"]" * 995 + b'}, "properties": {"delivery_tag": '
                b'"deep-tag", "delivery_info": {"exchange": "", "routing_key": "shapes"}}}')
        client.lpush(key, deep)
        # JSON both decoders take, that kombu cannot make a message of
        poisons = [json.dumps({**kombus, **change, "properties": {**kombus["properties"], "delivery_tag": name}})
                   .encode() for name, change in (
                       ("typed", {"headers": {**kombus["headers"], "x": {"__type__": "decimal", "__value__": "x"}}}),
                       ("bad-body", {"body": "abc"}))]
        for poison in poisons:
            client.lpush(key, poison)
        producer.publish({"n": 3}, routing_key="shapes", headers={"properties": {"delivery_tag": "decoy"}})
        producer.publish({"n": 4}, routing_key="shapes")
        consuming = connection.channel()
        Consumer(consuming, [queue], on_message=on_message).consume()
        while len(got) < 4:
            connection.drain_events(timeout=2)
        assert [item["n"] for item in got] == [1, 1, 3, 4]
        for record, tag in records:
            message, exchange, routing_key = record
            assert message["properties"]["delivery_tag"] == tag
            assert [exchange, routing_key] == [message["properties"]["delivery_info"]["exchange"],
                                               message["properties"]["delivery_info"]["routing_key"]]
        assert [tag for _, tag in records][1] == "reordered-tag"
        assert "decoy" not in [tag for _, tag in records]
        assert client.lrange("tasksq.dead.raw", 0, -1) == [*reversed(poisons), deep, b"\xff not json"]
        consuming.raw.close(settle=True)  # the last acks, held for the next take, go now
        wait_for(lambda: client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0, "an ack did not land")


def test_a_no_ack_consumer_leaves_no_unacked_record(redis_url):
    """Remote control reads its replies with no_ack: nothing ever acks them, so the take must not
    record them unacked (kombu does not either). Recorded, every broadcast's replies stayed in the
    unacked hash and went back into their reply list after the visibility timeout."""
    client = redis.Redis.from_url(redis_url)
    client.delete("unacked", "unacked_index")
    queue = Queue("noack")
    got: list = []
    with connect(redis_url) as connection:
        producer = Producer(connection.channel())
        for n in range(3):
            producer.publish({"n": n}, routing_key="noack", declare=[queue])
        Consumer(connection.channel(), [queue], on_message=got.append, no_ack=True).consume()
        while len(got) < 3:
            connection.drain_events(timeout=2)
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0, "a no_ack take was recorded"
        drain(connection, 2.5)  # past the visibility timeout (1 s) and a restore sweep
        assert [message.payload["n"] for message in got] == [0, 1, 2], "a no_ack message came back"


def wait_for(condition, what: str, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def queued(client: redis.Redis, queue: str) -> list[bytes]:
    """The messages in ``queue``'s lists (one per priority step), next in line last."""
    return [entry for key in sorted(client.keys(queue + "*")) if client.type(key) == b"list"
            for entry in client.lrange(key, 0, -1)]


def waiting_consumer(connection: Connection, queue: Queue, got: list, **options) -> Consumer:
    """A consumer whose wait (BRPOP for a wake token, a take behind it) is in flight: its look found nothing."""
    consumer = Consumer(connection.channel(), [queue], on_message=got.append, **options)
    consumer.consume()
    with pytest.raises(socket.timeout):
        connection.drain_events(timeout=0.2)
    assert consumer.channel._in_poll
    return consumer


def test_the_take_runs_the_moment_the_wait_ends(redis_url):
    """The take goes out behind the wait: Redis has taken (and recorded) the message before the
    consumer reads a byte, and delivering it needs no further word with Redis -- it is delivered
    while Redis refuses every command (CLIENT PAUSE)."""
    client = redis.Redis.from_url(redis_url)
    queue = Queue("woken")
    got: list = []
    with connect(redis_url, **TAKE_BEHIND) as consuming, connect(redis_url) as producing:
        waiting_consumer(consuming, queue, got)
        Producer(producing.channel()).publish({"n": 1}, routing_key="woken", declare=[queue])
        wait_for(lambda: not queued(client, "woken"), "the message stayed in its list until the consumer asked")
        tag = client.hkeys("unacked")
        assert len(tag) == 1, "taken but not recorded unacked"
        client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        try:
            consuming.drain_events(timeout=1)
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        assert [message.payload for message in got] == [{"n": 1}]
        assert got[0].delivery_tag.encode() == tag[0]
        got[0].ack()


def test_a_take_that_finds_the_script_gone_takes_again(redis_url):
    """Behind the wait, the take is an EVALSHA: a Redis whose script cache was flushed meanwhile
    (restarted, or SCRIPT FLUSH) answers NOSCRIPT, and the consumer loads the script and takes."""
    client = redis.Redis.from_url(redis_url)
    queue = Queue("flushed")
    got: list = []
    with connect(redis_url, **TAKE_BEHIND) as consuming, connect(redis_url) as producing:
        waiting_consumer(consuming, queue, got)
        client.script_flush()
        Producer(producing.channel()).publish({"n": 2}, routing_key="flushed", declare=[queue])
        consuming.drain_events(timeout=2)
        assert [message.payload for message in got] == [{"n": 2}]
        got[0].ack()


def test_a_message_taken_as_the_consumer_closes_goes_back_first_in_line(redis_url):
    """The wait's take can land as the channel closes: what it took was never delivered, so it goes
    back to the head of its list unchanged (not marked redelivered) with its unacked record dropped,
    and the next consumer gets it first, at once -- not after the visibility timeout."""
    client = redis.Redis.from_url(redis_url)
    client.delete("unacked", "unacked_index")
    queue = Queue("closing")
    got: list = []
    with connect(redis_url) as producing:
        producer = Producer(producing.channel())
        with connect(redis_url, **TAKE_BEHIND) as consuming:
            waiting_consumer(consuming, queue, got)
            producer.publish({"n": 1}, routing_key="closing", declare=[queue])
            wait_for(lambda: not queued(client, "closing"), "the take behind the wait took nothing")
            (record,) = client.hvals("unacked")
        assert got == [], "delivered while closing"
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0, "its record stayed"
        (entry,) = queued(client, "closing")
        assert json.loads(entry) == json.loads(record)[0], "it went back changed"
        producer.publish({"n": 2}, routing_key="closing")
        with connect(redis_url) as next_one:
            Consumer(next_one.channel(), [queue], on_message=got.append).consume()
            while len(got) < 2:
                next_one.drain_events(timeout=0.5)
            assert [message.payload["n"] for message in got] == [1, 2]
            assert not any(message.delivery_info.get("redelivered") for message in got)
            for message in got:
                message.ack()


def test_a_take_restored_elsewhere_before_it_is_read_is_neither_delivered_nor_given_back(redis_url):
    """The take behind a wait records its message unacked at once, but the consumer may read its
    answer much later (a warm shutdown cancels, then waits for running tasks). Past the visibility
    timeout another consumer's sweep restores the message and takes it again -- under the same
    tag. Closing then must not put the message back (a second copy) nor drop the other consumer's
    record: the record is the take's own only while its score is the take's stamp."""
    client = redis.Redis.from_url(redis_url)
    client.delete("unacked", "unacked_index")
    queue = Queue("late-close")
    got_a: list = []
    got_b: list = []
    with connect(redis_url) as producing, connect(redis_url) as b:
        a = connect(redis_url, **TAKE_BEHIND)  # b's visibility timeout, 1 s, is the one its sweep uses
        consumer = waiting_consumer(a, queue, got_a)
        Producer(producing.channel()).publish({"n": 1}, routing_key="late-close", declare=[queue])
        wait_for(lambda: client.hlen("unacked") == 1, "the take behind the wait took nothing")
        consumer.cancel()
        Consumer(b.channel(), [queue], on_message=got_b.append).consume()
        deadline = time.monotonic() + 5
        while not got_b:  # past the visibility timeout (1 s): b's sweep restores it, b takes it
            assert time.monotonic() < deadline, "the restore sweep never gave the message to b"
            drain(b, 0.3)
        assert client.hlen("unacked") == 1, "b holds it, unacked"
        a.close()  # reads the wait's answer, long after
        assert got_a == []
        assert client.hlen("unacked") == 1 and not queued(client, "late-close"), "a put back a second copy"
        drain(b, 1.5)
        assert [message.payload for message in got_b] == [{"n": 1}]
        got_b[0].ack()


def test_a_take_read_late_goes_back_instead_of_being_delivered(redis_url):
    """A consumer busy elsewhere (a -P solo worker running a long task) reads its wait's answer
    late. Read more than a sixth of the visibility timeout after the take went out, what it took is
    not delivered: here another consumer's sweep restored it meanwhile and runs it. (The clock the
    wait was sent by is moved back 100 s instead of waiting ten seconds.)"""
    client = redis.Redis.from_url(redis_url)
    client.delete("unacked", "unacked_index")
    queue = Queue("late-read")
    got_a: list = []
    got_b: list = []
    with connect(redis_url) as producing, connect(redis_url, **TAKE_BEHIND) as a, connect(redis_url) as b:
        consumer = waiting_consumer(a, queue, got_a)
        Producer(producing.channel()).publish({"n": 1}, routing_key="late-read", declare=[queue])
        wait_for(lambda: client.hlen("unacked") == 1, "the take behind the wait took nothing")
        Consumer(b.channel(), [queue], on_message=got_b.append).consume()
        deadline = time.monotonic() + 5
        while not got_b:  # b's sweep (visibility timeout 1 s) restores it, b takes it
            assert time.monotonic() < deadline, "the restore sweep never gave n=1 to b"
            drain(b, 0.3)
        consumer.channel._brpop_sent_at -= 100
        with pytest.raises(socket.timeout):
            a.drain_events(timeout=0.5)  # reads the answer now
        assert got_a == [], "n=1 delivered a second time"
        assert [message.payload for message in got_b] == [{"n": 1}] and client.hlen("unacked") == 1
        got_b[0].ack()


@pytest.mark.parametrize("no_ack", [False, True])
def test_a_queue_cancelled_while_the_wait_is_out_gets_its_message_back(redis_url, no_ack):
    """The take behind the wait was written for the queues consumed then. A message it takes from
    a queue cancelled meanwhile goes back to its list unchanged -- not marked redelivered, and not
    lost when the queue was consumed with no_ack (nothing records those)."""
    client = redis.Redis.from_url(redis_url)
    client.delete("unacked", "unacked_index")
    kept, cancelled = Queue("still-consumed"), Queue("cancelled-meanwhile")
    for key in client.keys("cancelled-meanwhile*"):  # the other parameter's message
        client.delete(key)
    got: list = []
    with connect(redis_url, **TAKE_BEHIND) as connection, connect(redis_url) as producing:
        channel = connection.channel()
        Consumer(channel, [kept], on_message=got.append).consume()
        gone = Consumer(channel, [cancelled], on_message=got.append, no_ack=no_ack)
        gone.consume()
        with pytest.raises(socket.timeout):
            connection.drain_events(timeout=0.2)
        assert channel._in_poll
        gone.cancel()
        Producer(producing.channel()).publish({"n": 1}, routing_key="cancelled-meanwhile", declare=[cancelled])
        drain(connection, 1.5)
        assert got == []
        (entry,) = queued(client, "cancelled-meanwhile")
        assert not json.loads(entry)["properties"]["delivery_info"].get("redelivered")
        assert client.hlen("unacked") == 0


def test_an_error_answer_to_the_wait_gives_back_what_the_take_behind_it_took(redis_url):
    """A wait answered with an error (a demoted master's UNBLOCKED, here CLIENT UNBLOCK ... ERROR)
    still has the take behind it run: its answer is read and what it took goes back to its list --
    not left unread (every later read was one answer behind, and a wake token was read as a take)
    nor left recorded until the visibility timeout."""
    client = redis.Redis.from_url(redis_url)
    client.delete("unacked", "unacked_index")
    queue = Queue("unblocked")
    got: list = []
    with connect(redis_url, **TAKE_BEHIND) as consuming, Connection(redis_url) as plain_kombu:
        consumer = waiting_consumer(consuming, queue, got)
        port = consumer.channel.client.connection._sock.getsockname()[1]
        (blocked,) = [entry for entry in client.client_list() if entry["addr"] == f"127.0.0.1:{port}"]
        assert blocked["cmd"] == "brpop"
        Producer(plain_kombu.channel()).publish({"n": 1}, routing_key="unblocked", declare=[queue])  # no wake token
        client.execute_command("CLIENT", "UNBLOCK", blocked["id"], "ERROR")
        with pytest.raises(redis.exceptions.ResponseError):
            consuming.drain_events(timeout=1)
        assert len(queued(client, "unblocked")) == 1 and client.hlen("unacked") == 0, "the take's message stranded"
        consuming.drain_events(timeout=2)
        assert [message.payload for message in got] == [{"n": 1}]
        got[0].ack()
        consumer.channel.raw.close(settle=True)  # the held ack goes now
        wait_for(lambda: client.hlen("unacked") == 0, "the ack did not land")


def test_a_queue_consumed_again_with_no_ack_meanwhile_gets_what_the_take_recorded_back(redis_url):
    """The take behind the wait recorded its message unacked, as the queue was consumed then; by the
    time its answer is read the queue is consumed with no_ack (nothing will ack it): it goes back,
    and the next take hands it over unrecorded -- delivered, its record not left to be restored."""
    client = redis.Redis.from_url(redis_url)
    client.delete("unacked", "unacked_index")
    queue = Queue("flipped")
    got: list = []
    with connect(redis_url, **TAKE_BEHIND) as consuming, connect(redis_url) as producing:
        consumer = waiting_consumer(consuming, queue, got)
        consumer.cancel()
        Consumer(consumer.channel, [queue], on_message=got.append, no_ack=True).consume()
        Producer(producing.channel()).publish({"n": 1}, routing_key="flipped", declare=[queue])
        drain(consuming, 1.0)
        assert [message.payload for message in got] == [{"n": 1}]
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0, "a no_ack message recorded"
