"""The Redis result backend on a real redis-server: Celery's key layout, expiry, waiting, chords.

Results go to database 1 of the session's server (as ``result_redis_url`` in
the interop suite). Chords run through the real executor from messages
captured off the publisher, as in ``test_groups.py``, so the counting is the
worker's own code and the Lua script runs on the real server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import weakref
from types import SimpleNamespace

import pytest
import redis

from django_tasks_q import chord
from django_tasks_q.checks import check_settings
from django_tasks_q.core.canvas import Signature, signature
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import ChordError, ImproperlyConfigured, TimeoutError
from django_tasks_q.results import redis_chords
from django_tasks_q.results.async_result import AsyncResult
from django_tasks_q.results.backend import _make, describe_exception, get_backend
from django_tasks_q.results.group_result import GroupResult
from django_tasks_q.results.redis import RedisBackend
from django_tasks_q.worker.executor import execute
from testproject.videos.tasks import add, fail, log, mark, tally
from tests.unit.outbox import outbox, work  # noqa: F401 - outbox is a fixture

NAME = "testproject.videos.tasks.add"


@pytest.fixture
def url(redis_url) -> str:
    return redis_url.rsplit("/", 1)[0] + "/1"


@pytest.fixture
def backend(settings, url) -> RedisBackend:
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": url, "RESULT_EXPIRES": 120}
    made = get_backend()
    assert isinstance(made, RedisBackend)
    return made


@pytest.fixture
def raw(url) -> redis.Redis:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def request(task_id: str, **more) -> SimpleNamespace:
    fields = dict(id=task_id, task=NAME, args=(2, 3), kwargs={"k": 1}, hostname="w1@host", retries=2,
                  delivery_info={"routing_key": "videos"}, group_id="g-1", parent_id="p-1")
    return SimpleNamespace(**{**fields, **more})


# -- task results ----------------------------------------------------------------------------------

def test_every_state_round_trips_in_celerys_layout(backend, raw):
    cases = [
        (TaskState.RECEIVED, None, ""),
        (TaskState.STARTED, {"pid": 7, "hostname": "w1@host"}, ""),
        ("PROGRESS", {"current": 3, "total": 10}, ""),
        (TaskState.RETRY, describe_exception(ConnectionError("flaky")), "Traceback (retry)"),
        (TaskState.SUCCESS, {"sum": [1, "two", None]}, ""),
        (TaskState.FAILURE, describe_exception(KeyError("missing")), "Traceback (most recent call last): ..."),
        (TaskState.REVOKED, describe_exception(Exception("revoked")), ""),
    ]
    for state, result, traceback in cases:
        task_id = str(uuid.uuid4())
        backend.mark(task_id, state, result=result, traceback=traceback, request=request(task_id), task_name=NAME)
        found = backend.meta(task_id)
        assert (found.state, found.result, found.traceback) == (state, result, traceback), state
        assert found.task_name == NAME and found.retries == 2
        assert (found.date_done is not None) == (state in (TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED))

        stored = json.loads(raw.get(f"celery-task-meta-{task_id}"))
        assert stored == {"status": state, "result": result, "traceback": traceback or None, "children": [],
                          "date_done": stored["date_done"], "task_id": task_id, "group_id": "g-1",
                          "parent_id": "p-1", "name": NAME, "args": [2, 3], "kwargs": {"k": 1},
                          "worker": "w1@host", "retries": 2, "queue": "videos"}, state

    # through AsyncResult: the exception comes back as its own type, custom state meta as info
    failed = str(uuid.uuid4())
    backend.mark(failed, TaskState.FAILURE, result=describe_exception(KeyError("missing")))
    with pytest.raises(KeyError, match="missing"):
        AsyncResult(failed).get(timeout=1)
    busy = str(uuid.uuid4())
    backend.mark(busy, "PROGRESS", result={"current": 3})
    assert AsyncResult(busy).state == "PROGRESS" and AsyncResult(busy).info == {"current": 3}
    assert AsyncResult(str(uuid.uuid4())).state == TaskState.PENDING


def test_results_and_saved_groups_expire_after_result_expires(backend, raw, settings):
    task_id, group_id = str(uuid.uuid4()), str(uuid.uuid4())
    backend.mark(task_id, TaskState.SUCCESS, result=1)
    GroupResult(group_id, [AsyncResult(task_id)]).save()
    assert 0 < raw.ttl(f"celery-task-meta-{task_id}") <= 120
    assert 0 < raw.ttl(f"celery-taskset-meta-{group_id}") <= 120
    assert json.loads(raw.get(f"celery-taskset-meta-{group_id}")) == {
        "result": [[group_id, None], [[[task_id, None], None]]]}  # Celery's GroupResult.as_tuple()
    assert [r.id for r in GroupResult.restore(group_id)] == [task_id]

    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_EXPIRES": None}
    kept = str(uuid.uuid4())
    get_backend().mark(kept, TaskState.SUCCESS, result=2)
    assert raw.ttl(f"celery-task-meta-{kept}") == -1  # no expiry
    assert backend.cleanup(older_than=None) == 0  # nothing to sweep: keys expire on their own


def test_forget_deletes_the_key_and_the_state_is_pending_again(backend, raw):
    task_id = str(uuid.uuid4())
    backend.mark(task_id, TaskState.SUCCESS, result="done")
    AsyncResult(task_id).forget()
    assert raw.exists(f"celery-task-meta-{task_id}") == 0
    assert AsyncResult(task_id).state == TaskState.PENDING


def test_started_goes_out_without_waiting_and_never_over_a_final_state(backend, raw):
    """The STARTED write before a task runs does not wait for Redis (a round trip less per task),
    and one that lands after the final state (it travels on another connection) changes nothing."""
    task_id = str(uuid.uuid4())
    backend.mark_started(str(uuid.uuid4()), task_name=NAME)  # this thread's STARTED connection is made
    listener = raw.pubsub()
    listener.subscribe(key := f"celery-task-meta-{task_id}")
    assert listener.get_message(timeout=1)["type"] == "subscribe"
    raw.execute_command("CLIENT", "PAUSE", 400, "ALL")  # Redis answers nobody for 0.4 s
    began = time.monotonic()
    backend.mark_started(task_id, request=request(task_id), task_name=NAME)
    assert time.monotonic() - began < 0.2, "the STARTED write waited for Redis"
    published = listener.get_message(timeout=3)
    assert published and json.loads(published["data"])["status"] == TaskState.STARTED
    stored = json.loads(raw.get(key))
    assert (stored["status"], stored["worker"], stored["args"]) == (TaskState.STARTED, "w1@host", [2, 3])
    assert 0 < raw.ttl(key) <= 120
    assert backend.meta(task_id).state == TaskState.STARTED  # the pooled connection had no reply left on it

    backend.mark(task_id, TaskState.SUCCESS, result=5, request=request(task_id), task_name=NAME)
    assert json.loads(listener.get_message(timeout=1)["data"])["status"] == TaskState.SUCCESS
    backend.mark_started(task_id, request=request(task_id), task_name=NAME)  # late: after the final state
    assert listener.get_message(timeout=0.5) is None, "a late STARTED was published"
    assert (backend.meta(task_id).state, backend.meta(task_id).result) == (TaskState.SUCCESS, 5)
    listener.close()


def test_received_goes_out_without_waiting_and_never_over_a_later_state(backend, raw):
    """RECEIVED (a task waiting in a worker) does not wait for Redis either; it replaces nothing but a
    RECEIVED, so one that lands after the STARTED a prefork child wrote on its own connection, after a
    custom state or after the final state changes nothing."""
    backend.mark_received(str(uuid.uuid4()), task_name=NAME)  # this thread's own connection is made
    waiting, started, progress, done = (str(uuid.uuid4()) for _ in range(4))
    raw.execute_command("CLIENT", "PAUSE", 400, "ALL")  # Redis answers nobody for 0.4 s
    began = time.monotonic()
    backend.mark_received(waiting, request=request(waiting), task_name=NAME)
    assert time.monotonic() - began < 0.2, "the RECEIVED write waited for Redis"
    assert backend.meta(waiting).state == TaskState.RECEIVED
    assert json.loads(raw.get(f"celery-task-meta-{waiting}"))["worker"] == "w1@host"
    backend.mark_received(waiting, request=request(waiting, hostname="w2@host"), task_name=NAME)  # redelivered
    backend.mark_started(str(uuid.uuid4()), task_name=NAME)  # same connection, in order: the one above landed
    assert json.loads(raw.get(f"celery-task-meta-{waiting}"))["worker"] == "w2@host"

    backend.mark_started(started, task_name=NAME)
    backend.mark(progress, "PROGRESS", result={"done": 1})
    backend.mark(done, TaskState.SUCCESS, result=3)
    for task_id in (started, progress, done):
        backend.mark_received(task_id, request=request(task_id), task_name=NAME)
    backend.mark_received(str(uuid.uuid4()), task_name=NAME)  # reads the answers owed: all have landed
    assert [backend.meta(task_id).state for task_id in (started, progress, done)] == [
        TaskState.STARTED, "PROGRESS", TaskState.SUCCESS]


def test_the_quiet_writes_load_their_scripts_once_and_again_after_a_flush(settings, url, raw, caplog):
    """STARTED and RECEIVED run one script by EVALSHA: its source crosses once per connection (a SCRIPT
    LOAD in the same write as its first use), not with every task. After SCRIPT FLUSH one write is refused
    (NOSCRIPT, logged) and the next loads the scripts again."""
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": url, "RESULT_EXPIRES": 120}
    backend = RedisBackend(url)  # its own: this thread's connection of the shared one has loaded them already
    raw.config_resetstat()
    first = str(uuid.uuid4())
    backend.mark_received(first, task_name=NAME)  # makes the connection and loads the script with this write
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for task_id in ids:
        backend.mark_received(task_id, task_name=NAME)
        backend.mark_started(task_id, task_name=NAME)
    backend.mark_received(str(uuid.uuid4()), task_name=NAME)  # settles the answers owed
    stats = raw.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 42 and "cmdstat_eval" not in stats
    script_loads = {name: figures["calls"] for name, figures in stats.items() if "script" in name}
    assert sum(script_loads.values()) == 1, script_loads  # one script for STARTED and RECEIVED, loaded once
    assert all(backend.meta(task_id).state == TaskState.STARTED for task_id in ids)

    raw.script_flush()
    lost, landed = str(uuid.uuid4()), str(uuid.uuid4())
    with caplog.at_level(logging.WARNING, logger="django_tasks_q.results.redis"):
        backend.mark_started(lost, task_name=NAME)
        backend.mark_started(landed, task_name=NAME)  # reads `lost`'s NOSCRIPT, then loads the script again
        backend.mark_started(str(uuid.uuid4()), task_name=NAME)
    assert caplog.text.count("Redis refused a STARTED write") == 1 and "No matching script" in caplog.text
    assert backend.meta(lost) is None
    assert backend.meta(landed).state == TaskState.STARTED


def test_the_final_write_follows_the_quiet_ones_and_a_refusal_is_raised_with_nothing_left_unread(backend, raw):
    """A final state goes out on the thread's own connection after its STARTED (so always after it), and
    waits for Redis: a SET that Redis refuses (out of memory) raises as through the pool, and the next
    write on that connection reads its own answers, not that one's."""
    task_id, after = str(uuid.uuid4()), str(uuid.uuid4())
    backend.mark_started(task_id, task_name=NAME)
    backend.mark(task_id, TaskState.SUCCESS, result=1)
    assert backend.meta(task_id).state == TaskState.SUCCESS
    maxmemory, policy = raw.config_get("maxmemory")["maxmemory"], raw.config_get("maxmemory-policy")
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            backend.mark(str(uuid.uuid4()), TaskState.SUCCESS, result="x" * 1000)
    finally:
        raw.config_set("maxmemory", maxmemory)
        raw.config_set("maxmemory-policy", policy["maxmemory-policy"])
    backend.mark(after, TaskState.SUCCESS, result=2)
    assert (backend.meta(after).state, backend.meta(after).result) == (TaskState.SUCCESS, 2)


BUSY_FOR_400_MS = """
local began = redis.call('TIME')
while true do
    local now = redis.call('TIME')
    if (now[1] - began[1]) * 1000000 + (now[2] - began[2]) > 400000 then return 1 end
end
"""


def test_a_started_write_a_busy_redis_refuses_is_logged_and_leaves_no_stale_reply(backend, raw, url, caplog):
    """While a long script runs, Redis answers every other command with BUSY. A STARTED write sent
    then gets that answer later, on the thread's own STARTED connection: it is read (and logged)
    before the next STARTED write, and no other command ever reads it in place of its own reply."""
    backend.mark_started(str(uuid.uuid4()), task_name=NAME)  # this thread's STARTED connection is made
    refused, done, after = (str(uuid.uuid4()) for _ in range(3))
    raw.config_set("lua-time-limit", 50)  # BUSY after 50 ms instead of 5 s
    try:
        busy = threading.Thread(target=redis.Redis.from_url(url).eval, args=(BUSY_FOR_400_MS, 0))
        busy.start()
        time.sleep(0.2)
        began = time.monotonic()
        backend.mark_started(refused, request=request(refused), task_name=NAME)
        assert time.monotonic() - began < 0.15, "the STARTED write waited for a busy Redis"
        busy.join()
    finally:
        raw.config_set("lua-time-limit", 5000)
    backend.mark(done, TaskState.SUCCESS, result=7)
    assert (backend.meta(done).state, backend.meta(done).result) == (TaskState.SUCCESS, 7)
    assert backend.meta(refused) is None, "Redis was busy: the STARTED write cannot have been applied"
    with caplog.at_level(logging.WARNING, logger="django_tasks_q.results.redis"):
        backend.mark_started(after, request=request(after), task_name=NAME)
    assert "Redis refused a STARTED write" in caplog.text and "BUSY" in caplog.text
    backend.mark_started(str(uuid.uuid4()), task_name=NAME)  # reads the answer to `after`'s: it has landed
    assert backend.meta(after).state == TaskState.STARTED


def test_a_started_connection_the_pool_disconnected_is_not_read_for_a_lost_reply(backend, caplog):
    """``connection_pool.disconnect()`` closes every connection the pool made, a thread's STARTED
    connection included: the answer owed on it is gone, so it is not read for (the connection
    simply opens again), and the write is not taken for a broken connection."""
    task_id = str(uuid.uuid4())
    finished = threading.Event()

    def one_thread() -> None:  # its own STARTED connection, an answer owed, then the pool disconnects
        backend.mark_started(str(uuid.uuid4()), task_name=NAME)
        backend.client.connection_pool.disconnect()
        backend.mark_started(task_id, task_name=NAME)
        finished.set()

    threading.Thread(target=one_thread, daemon=True).start()
    assert finished.wait(5), "the STARTED write waited for an answer its closed connection will never get"
    assert "could not go out on its own connection" not in caplog.text
    deadline = time.monotonic() + 2
    while (backend.meta(task_id) or SimpleNamespace(state=None)).state != TaskState.STARTED:
        assert time.monotonic() < deadline, "the STARTED write after the disconnect did not land"
        time.sleep(0.01)


def test_started_writes_past_the_per_process_limit_wait_for_redis(backend, raw, monkeypatch):
    """Threads past THREAD_CONNECTIONS (``-P threads -c 500``) do not each open a connection: their
    STARTED goes through the pool and waits, as other writes do."""
    from django_tasks_q.results import redis as redis_results

    monkeypatch.setattr(redis_results, "THREAD_CONNECTIONS", 1)
    backend._local.started = None
    backend._writers = weakref.WeakSet()
    backend.mark_started(str(uuid.uuid4()), task_name=NAME)  # this thread takes the only one
    took: list[float] = []

    def other_thread() -> None:
        began = time.monotonic()
        backend.mark_started(str(uuid.uuid4()), task_name=NAME)
        took.append(time.monotonic() - began)

    raw.execute_command("CLIENT", "PAUSE", 300, "ALL")
    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert took and took[0] >= 0.2, f"the second thread's STARTED did not wait ({took})"


def test_a_thread_that_ends_gives_its_started_connection_back(backend, monkeypatch):
    """The limit counts live threads: a pool that shrinks and grows again (autoscale) does not use
    the connections up for good."""
    from django_tasks_q.results import redis as redis_results

    monkeypatch.setattr(redis_results, "THREAD_CONNECTIONS", 1)
    backend._local.started = None
    backend._writers = weakref.WeakSet()
    kept: list[bool] = []

    def one_task() -> None:
        backend.mark_started(str(uuid.uuid4()), task_name=NAME)
        kept.append(getattr(backend._local, "started", None) is not None)  # wrote on a connection of its own

    for _ in range(3):  # one after another, each a new thread
        thread = threading.Thread(target=one_task)
        thread.start()
        thread.join()
    assert kept == [True, True, True], f"a later thread found the only STARTED connection still taken: {kept}"
    assert len(backend._writers) == 0


def _started_state(backend, task_id: str) -> bool:
    found = backend.meta(task_id)
    return found is not None and found.state == TaskState.STARTED


def test_a_started_write_after_redis_dropped_the_connection_is_not_lost(backend, raw):
    """Redis closed this thread's STARTED connection (a restart, CLIENT KILL, its idle timeout): the
    next write must see that and reconnect, not go into the dead socket unnoticed."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    backend.mark_started(first, task_name=NAME)
    deadline = time.monotonic() + 2
    while not _started_state(backend, first):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    raw.client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.1)
    backend.mark_started(second, task_name=NAME)
    deadline = time.monotonic() + 2
    while not _started_state(backend, second):
        assert time.monotonic() < deadline, "the STARTED write went into a connection Redis had closed"
        time.sleep(0.01)


def test_started_works_on_a_server_without_client(settings, redis_without_client_reply):
    """Nothing in the STARTED write depends on CLIENT (which proxies often refuse)."""
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": redis_without_client_reply}
    backend = get_backend()
    task_id = str(uuid.uuid4())
    backend.mark_started(task_id, request=request(task_id), task_name=NAME)
    backend.mark_started(str(uuid.uuid4()), task_name=NAME)  # reads the first one's reply
    assert backend.meta(task_id).state == TaskState.STARTED
    backend.mark(task_id, TaskState.SUCCESS, result=1)
    assert backend.meta(task_id).state == TaskState.SUCCESS
    backend.client.close()


def test_get_sleeps_on_the_publish_and_times_out_without_polling(backend, raw):
    task_id = str(uuid.uuid4())
    threading.Timer(0.3, backend.mark, (task_id, TaskState.SUCCESS), {"result": 42}).start()
    gets_before = _get_calls(raw)
    started = time.monotonic()
    assert AsyncResult(task_id).get(timeout=10) == 42
    # woken by the publish: well before the 5 s safety re-read, with one GET (the read after subscribing)
    assert time.monotonic() - started < 4
    assert _get_calls(raw) - gets_before == 1

    gets_before = _get_calls(raw)
    with pytest.raises(TimeoutError, match="not ready after 1.0s"):
        AsyncResult(str(uuid.uuid4())).get(timeout=1.0, interval=0.01)
    # waited on the subscription (a poll every 0.01 s would be ~100 GETs): one read, one last look
    assert _get_calls(raw) - gets_before <= 2


def test_gets_in_a_row_share_one_subscription_connection_and_skip_stale_messages(backend, raw):
    connections_before = _connections_received(raw)
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    backend.mark(first, TaskState.SUCCESS, result=1)
    assert AsyncResult(first).get(timeout=5) == 1
    backend.mark(first, TaskState.SUCCESS, result="stale")  # published after that get() unsubscribed
    threading.Timer(0.2, backend.mark, (second, TaskState.SUCCESS), {"result": 2}).start()
    assert AsyncResult(second).get(timeout=5) == 2  # the stale message for `first` is not taken for it
    with pytest.raises(TimeoutError):
        AsyncResult(third).get(timeout=0.3)
    backend.mark(third, TaskState.SUCCESS, result=3)
    assert AsyncResult(third).get(timeout=5) == 3
    # one subscription connection (and at most one pooled one for the reads) for four waits: not one each
    assert _connections_received(raw) - connections_before <= 2


def test_more_writers_than_connections_wait_for_one_instead_of_failing(backend, raw):
    """``-P threads/asyncio -c 500`` write results from 500 threads; redis-py's pool refused the 101st with
    "Too many connections" and the result was lost (a task stayed STARTED for ever)."""
    ids = [str(uuid.uuid4()) for _ in range(300)]
    start = threading.Barrier(len(ids))
    failures: list[BaseException] = []

    def write(task_id: str) -> None:
        start.wait()
        try:
            for state in (TaskState.STARTED, TaskState.SUCCESS):
                backend.mark(task_id, state, result=1)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(task_id,)) for task_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert all(backend.meta(task_id).state == TaskState.SUCCESS for task_id in ids)
    assert backend.client.connection_pool.max_connections == 100  # bounded all the same


def _connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def _get_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_get", {}).get("calls", 0)


# -- chords on Celery's chord keys ---------------------------------------------------------------

def chord_keys(raw: redis.Redis, group_id: str) -> set[str]:
    return {k.decode() for k in raw.keys(f"celery-taskset-meta-{group_id}*")}


def test_chord_counts_on_celerys_keys_and_sends_its_body_once(backend, raw, outbox, tmp_path):
    tallies = tmp_path / "tally"
    result = chord([add.s(i, i) for i in range(4)], tally.s(str(tallies))).delay()
    header, group_id = outbox[:], result.parent.id
    assert raw.get(f"celery-taskset-meta-{group_id}.s") == b"4"  # written before the members were sent
    assert [(m.group_id, m.group_index, m.chord["task"], m.chord["chord_size"]) for m in header] == [
        (group_id, i, "testproject.videos.tasks.tally", 4) for i in range(4)]

    work(outbox, order=[2, 0, 3])  # three of four done: Celery's .j layout, scored by header index
    joined = raw.zrange(f"celery-taskset-meta-{group_id}.j", 0, -1, withscores=True)
    assert [(json.loads(v), s) for v, s in joined] == [([1, header[i].id, "SUCCESS", i * 2], i) for i in (0, 2, 3)]
    assert "testproject.videos.tasks.tally" not in [m.task for m in outbox]

    work(outbox, order=[1, 1])  # the last member, then a redelivered copy of it
    assert result.get(timeout=2) == 12
    assert tallies.read_text().splitlines() == ["4 12"]  # ran once, with the results in header order
    assert chord_keys(raw, group_id) == {f"celery-taskset-meta-{group_id}.c"}
    assert raw.get(f"celery-taskset-meta-{group_id}.c") == b"done"

    execute(header[0], {"queue": "default"}, "unit@host")  # a late duplicate after the body was sent
    assert [m.task for m in outbox].count("testproject.videos.tasks.tally") == 1
    assert chord_keys(raw, group_id) == {f"celery-taskset-meta-{group_id}.c"}  # nothing recreated


def test_concurrent_last_members_claim_the_body_once(backend, raw):
    """Many workers finishing the same header at once: the script hands the claim to exactly one."""
    group_id = str(uuid.uuid4())
    redis_chords.start_chord(backend, group_id, 8)
    keys = redis_chords._keys(group_id)
    claims, barrier = [], threading.Barrier(8)

    def finish(index: int) -> None:
        barrier.wait()
        for attempt in range(3):  # each member counted three times (redeliveries)
            claims.append(redis_chords._script(backend)(
                keys=keys, args=[f"t{index}:{index}", index, json.dumps([1, f"t{index}", "SUCCESS", index]),
                                 120, f"token-{index}-{attempt}", 60])[2])

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [0] * 23 + [1]
    assert raw.zcard(keys[0]) == 8 and raw.scard(keys[1]) == 8


def test_failed_member_fails_the_chord_once_all_have_finished(backend, raw, outbox, tmp_path):
    flag = tmp_path / "errback"
    body = signature(log, (), link_error=[Signature(mark, (str(flag), "errback ran"), immutable=True)])
    result = chord([add.s(1, 1), fail.si("member broke"), add.s(2, 2)], body).delay()
    failing = outbox[1]
    work(outbox, order=[1, 0])
    assert AsyncResult(result.id).state == TaskState.PENDING  # Celery's rule: wait for every member
    work(outbox, order=[2])
    with pytest.raises(ChordError, match=rf"member {failing.id} ended FAILURE: ValueError: member broke"):
        result.get(timeout=2)
    assert "testproject.videos.tasks.log" not in [m.task for m in outbox]
    assert flag.read_text().startswith("errback ran")
    assert chord_keys(raw, result.parent.id) == {f"celery-taskset-meta-{result.parent.id}.c"}


def test_a_chain_member_failing_midway_fails_the_chord(backend, outbox):
    result = chord([add.s(1, 1), fail.si("midway") | add.s(10)], log.s()).delay()
    work(outbox)
    with pytest.raises(ChordError, match="ValueError: midway"):
        result.get(timeout=2)
    assert "testproject.videos.tasks.log" not in [m.task for m in outbox]


def test_a_member_of_a_chord_without_a_size_key_is_reported_not_dropped(backend, raw, outbox, caplog):
    result = chord([add.s(1, 1)], log.s()).delay()
    raw.delete(f"celery-taskset-meta-{result.parent.id}.s")  # e.g. sent while RESULT_BACKEND was "django"
    with caplog.at_level(logging.ERROR, logger="django_tasks_q"):
        work(outbox)
    assert f"chord {result.parent.id}: member {outbox[0].id} counted but the chord has no size key" in caplog.text
    assert AsyncResult(outbox[0].id).get(timeout=1) == 2  # the member's own result is stored


# -- settings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "problem"), [
    ("redis://localhost:notaport/1", "the port is not a number"),
    ("redis://localhost:6379/results", "the database after the host must be a number, got 'results'"),
    ("redis://", "no host"),
    ("memcached://localhost:11211", "not a supported result backend"),
])
def test_a_malformed_result_backend_is_named_by_check_and_refused(settings, value, problem):
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": value}
    errors = check_settings()
    assert [e.id for e in errors] == ["django_tasks_q.E004"]
    assert errors[0].msg.startswith("TASKS_Q['RESULT_BACKEND']") and problem in errors[0].msg
    with pytest.raises(ImproperlyConfigured, match=problem):
        _make(value)


@pytest.mark.parametrize("value", ["redis://localhost:6379/1", "rediss://:pw@cache.example:6380/0",
                                   "unix:///run/redis.sock?db=2", "django", None])
def test_well_formed_result_backends_pass_the_check(settings, value):
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": value}
    assert check_settings() == []
