"""The cache result backend on LocMemCache, and on django-redis and Django's RedisCache over a real redis-server.

Every test runs on each cache (``backend`` is parametrised): LocMemCache
shows the backend's logic in one process, the Redis caches that the same
calls hold up on the caches sites run in production (their keys and TTLs are
read back with redis-py). Chords run through the real executor from messages
captured off the publisher, as in ``test_groups.py`` and
``test_results_redis.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from types import SimpleNamespace

import pytest
import redis
from django.core.cache import caches

from django_tasks_q import chord
from django_tasks_q.core.canvas import Signature, signature
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import ChordError, EncodeError, TimeoutError
from django_tasks_q.results.async_result import AsyncResult
from django_tasks_q.results.backend import describe_exception, get_backend
from django_tasks_q.results.cache import CacheBackend
from django_tasks_q.results.group_result import GroupResult
from django_tasks_q.worker.executor import execute
from testproject.videos.tasks import add, fail, log, mark, tally, unjsonable
from tests.unit.outbox import outbox, work  # noqa: F401 - outbox is a fixture

NAME = "testproject.videos.tasks.add"


@pytest.fixture(params=["locmem", pytest.param("django-redis", marks=pytest.mark.redis),
                        pytest.param("django-builtin-redis", marks=pytest.mark.redis)])
def kind(request) -> str:
    return request.param


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(kind, request):
    """redis-py on the cache's database (the Redis caches), or None (LocMemCache)."""
    if kind == "locmem":
        yield None
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/2")
    yield client
    client.close()


@pytest.fixture
def backend(kind, raw, prefix, settings) -> CacheBackend:
    """RESULT_BACKEND = "cache://results" on a private LocMemCache, or on a Redis cache in database 2."""
    if kind == "locmem":
        spec = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": prefix}
    else:
        location = raw.connection_pool.connection_kwargs
        spec = {"BACKEND": "django_redis.cache.RedisCache" if kind == "django-redis" else
                "django.core.cache.backends.redis.RedisCache",
                "LOCATION": f"redis://{location['host']}:{location['port']}/2", "KEY_PREFIX": prefix}
    settings.CACHES = {**settings.CACHES, "results": spec}
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": "cache://results", "RESULT_EXPIRES": 120}
    made = get_backend()
    assert isinstance(made, CacheBackend) and made.alias == "results"
    return made


def stored(key: str):
    """The text the backend stored under ``key``, read through the cache."""
    return caches["results"].get(key)


def request(task_id: str, **more) -> SimpleNamespace:
    fields = dict(id=task_id, task=NAME, args=(2, 3), kwargs={"k": 1}, hostname="w1@host", retries=2,
                  delivery_info={"routing_key": "videos"}, group_id="g-1", parent_id="p-1")
    return SimpleNamespace(**{**fields, **more})


# -- task results ----------------------------------------------------------------------------------

def test_every_state_round_trips_in_celerys_layout(backend):
    cases = [
        (TaskState.RECEIVED, None, ""),
        (TaskState.STARTED, None, ""),
        ("PROGRESS", {"current": 3, "total": 10}, ""),
        (TaskState.RETRY, describe_exception(ConnectionError("flaky")), "Traceback (retry)"),
        (TaskState.SUCCESS, {"sum": [1, "two", None]}, ""),
        (TaskState.FAILURE, describe_exception(KeyError("missing")), "Traceback (most recent call last): ..."),
        (TaskState.REVOKED, describe_exception(Exception("revoked")), ""),
    ]
    for state, result, traceback in cases:
        task_id = str(uuid.uuid4())
        if state == TaskState.STARTED:
            backend.mark_started(task_id, request=request(task_id), task_name=NAME)
        else:
            backend.mark(task_id, state, result=result, traceback=traceback, request=request(task_id),
                         task_name=NAME)
        found = backend.meta(task_id)
        assert (found.state, found.result, found.traceback) == (state, result, traceback), state
        assert found.task_name == NAME and found.retries == 2
        assert (found.date_done is not None) == (state in (TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED))
        document = json.loads(stored(f"celery-task-meta-{task_id}"))  # the Redis backend's document
        assert document == {"status": state, "result": result, "traceback": traceback or None, "children": [],
                            "date_done": document["date_done"], "task_id": task_id, "group_id": "g-1",
                            "parent_id": "p-1", "name": NAME, "args": [2, 3], "kwargs": {"k": 1},
                            "worker": "w1@host", "retries": 2, "queue": "videos"}, state

    failed = str(uuid.uuid4())
    backend.mark(failed, TaskState.FAILURE, result=describe_exception(KeyError("missing")))
    with pytest.raises(KeyError, match="missing"):
        AsyncResult(failed).get(timeout=1)
    done = str(uuid.uuid4())
    backend.mark(done, TaskState.SUCCESS, result=[1, 2])
    assert AsyncResult(done).get(timeout=1) == [1, 2]
    assert AsyncResult(str(uuid.uuid4())).state == TaskState.PENDING


def test_get_on_a_started_task_times_out_naming_the_state(backend):
    task_id = str(uuid.uuid4())
    backend.mark_started(task_id, request=request(task_id), task_name=NAME)
    with pytest.raises(TimeoutError, match=f"task {task_id} not ready after 0.05s \\(state STARTED\\)"):
        AsyncResult(task_id).get(timeout=0.05, interval=0.01)


def test_forget_deletes_the_entry_and_the_state_is_pending_again(backend):
    task_id = str(uuid.uuid4())
    backend.mark(task_id, TaskState.SUCCESS, result="done")
    AsyncResult(task_id).forget()
    assert stored(f"celery-task-meta-{task_id}") is None
    assert AsyncResult(task_id).state == TaskState.PENDING


def test_entries_carry_result_expires_and_cleanup_has_nothing_to_do(backend, raw, prefix, settings):
    task_id, group_id = str(uuid.uuid4()), str(uuid.uuid4())
    backend.mark(task_id, TaskState.SUCCESS, result=1)
    GroupResult(group_id, [AsyncResult(task_id)]).save()
    assert json.loads(stored(f"celery-taskset-meta-{group_id}")) == {
        "result": [[group_id, None], [[[task_id, None], None]]]}  # Celery's GroupResult.as_tuple()
    if raw is not None:  # the cache's prefix and version, then our key, with RESULT_EXPIRES
        assert 0 < raw.ttl(f"{prefix}:1:celery-task-meta-{task_id}") <= 120
        assert 0 < raw.ttl(f"{prefix}:1:celery-taskset-meta-{group_id}") <= 120
    assert backend.cleanup(older_than=None) == 0

    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_EXPIRES": None}
    kept = str(uuid.uuid4())
    get_backend().mark(kept, TaskState.SUCCESS, result=2)
    assert AsyncResult(kept).get(timeout=1) == 2
    if raw is not None:
        assert raw.ttl(f"{prefix}:1:celery-task-meta-{kept}") == -1  # no expiry


@pytest.mark.parametrize(("expires", "timeout"), [(None, None), (0, None), (0.2, 1), (120, 120), (90.5, 91)])
def test_result_expires_becomes_a_timeout_that_is_never_zero(settings, expires, timeout):
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_EXPIRES": expires}
    assert CacheBackend.timeout() == timeout  # Django's timeout 0 means "expire at once"


def test_saved_groups_restore_in_order_and_delete(backend):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    GroupResult("g-cache", [AsyncResult(i) for i in ids]).save()
    restored = GroupResult.restore("g-cache")
    assert restored.id == "g-cache" and [r.id for r in restored.results] == ids
    assert GroupResult.restore("never-saved") is None
    restored.delete()
    assert GroupResult.restore("g-cache") is None


def test_a_return_value_that_is_not_json_fails_the_task_not_the_worker(backend, outbox):
    result = unjsonable.delay()
    work(outbox)
    with pytest.raises(EncodeError, match="testproject.videos.tasks.unjsonable returned object"):
        result.get(timeout=1)
    later = add.delay(1, 2)
    work(outbox, order=[1])
    assert later.get(timeout=1) == 3  # and the next task is stored as usual


# -- chords ------------------------------------------------------------------------------------------

def chord_entries(group_id: str) -> dict:
    keys = [f"celery-taskset-meta-{group_id}.{suffix}" for suffix in ("ids", "count", "failed", "done")]
    return {key.rpartition(".")[2]: value for key, value in caches["results"].get_many(keys).items()}


def test_chord_body_runs_once_with_results_in_header_order(backend, outbox, tmp_path):
    tallies = tmp_path / "tally"
    result = chord([add.s(i, i) for i in range(4)], tally.s(str(tallies))).delay()
    header, group_id = outbox[:], result.parent.id
    assert chord_entries(group_id) == {"ids": json.dumps([m.id for m in header]), "count": 0}

    work(outbox, order=[2, 2, 0, 3])  # three of four done, out of order, one of them delivered twice
    assert chord_entries(group_id)["count"] == 3
    assert "testproject.videos.tasks.tally" not in [m.task for m in outbox]

    work(outbox, order=[1, 1])  # the last member, then a redelivered copy of it
    assert result.get(timeout=2) == 12
    assert tallies.read_text().splitlines() == ["4 12"]  # ran once, with the results in header order
    assert chord_entries(group_id) == {"done": "done"}  # the chord's keys are gone
    assert caches["results"].get(f"celery-taskset-meta-{group_id}.member.{header[0].id}") is None

    execute(header[0], {"queue": "default"}, "unit@host")  # a late duplicate after the body was sent
    assert [m.task for m in outbox].count("testproject.videos.tasks.tally") == 1
    assert chord_entries(group_id) == {"done": "done"}  # nothing recreated


def test_chains_inside_a_chord_count_their_last_step(backend, outbox):
    result = chord([add.s(1, 1) | add.s(10) | add.s(100), add.s(2, 2)], log.s()).delay()
    work(outbox)
    assert result.get(timeout=1) == "LOG: [112, 4]"


def test_failed_member_fails_the_chord_at_once_naming_it_and_runs_link_error(backend, outbox, tmp_path):
    flag = tmp_path / "errback"
    body = signature(log, (), link_error=[Signature(mark, (str(flag), "errback ran"), immutable=True)])
    result = chord([add.s(1, 1), fail.si("member broke"), add.s(2, 2)], body).delay()
    failing = outbox[1]
    work(outbox, order=[1])
    with pytest.raises(ChordError) as raised:
        result.get(timeout=1)
    assert str(raised.value) == (f"chord member testproject.videos.tasks.fail[{failing.id}] failed: "
                                 "ValueError: member broke")
    assert flag.read_text().startswith("errback ran")
    work(outbox, order=[0, 2])  # the rest finish: the body never runs, the keys go
    assert "testproject.videos.tasks.log" not in [m.task for m in outbox]
    assert AsyncResult(result.id).state == TaskState.FAILURE
    assert chord_entries(result.parent.id) == {"done": "done"}


def test_a_chain_member_failing_midway_fails_the_chord(backend, outbox):
    result = chord([add.s(1, 1), fail.si("midway") | add.s(10)], log.s()).delay()
    work(outbox)
    with pytest.raises(ChordError, match="ValueError: midway"):
        result.get(timeout=2)
    assert "testproject.videos.tasks.log" not in [m.task for m in outbox]
    assert chord_entries(result.parent.id) == {"done": "done"}


def test_a_member_whose_value_cannot_reach_the_body_fails_the_chord(backend, outbox):
    """``ignore_result``: nothing checked the value when the member finished, so the counting meets it."""
    result = chord([add.s(1, 1), signature(unjsonable, (), ignore_result=True)], log.s()).delay()
    work(outbox)
    with pytest.raises(ChordError, match="EncodeError: chord member testproject.videos.tasks.unjsonable"):
        result.get(timeout=1)
    assert chord_entries(result.parent.id) == {"done": "done"}


def test_a_member_of_a_chord_without_a_counter_is_reported_not_dropped(backend, outbox, caplog):
    result = chord([add.s(1, 1)], log.s()).delay()
    caches["results"].delete(f"celery-taskset-meta-{result.parent.id}.count")  # evicted, or another backend's
    with caplog.at_level(logging.ERROR, logger="django_tasks_q"):
        work(outbox)
    assert (f"chord {result.parent.id}: member {outbox[0].id} finished but the chord has no counter"
            in caplog.text)
    assert AsyncResult(outbox[0].id).get(timeout=1) == 2  # the member's own result is stored


def test_members_finishing_at_once_send_the_body_exactly_once(backend, outbox):
    """Threads (each with its own cache object and, on django-redis, its own connection) count one
    header at once, every member twice: one sees the header complete."""
    size = 16
    group_id, body = str(uuid.uuid4()), dict(signature(log, ()), options={"task_id": str(uuid.uuid4())})
    ids = [f"{group_id}-{i}" for i in range(size)]
    backend.start_chord(group_id, body, ids)
    barrier = threading.Barrier(size)

    def finish(index: int) -> None:
        message = TaskMessage(id=ids[index], task=NAME, group_id=group_id, group_index=index, chord=body)
        barrier.wait()
        for _ in range(2):
            backend.on_chord_part_return(message, TaskState.SUCCESS, index)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    bodies = [m for m in outbox if m.task == "testproject.videos.tasks.log"]
    assert len(bodies) == 1 and bodies[0].args == ([*range(size)],)
    assert chord_entries(group_id) == {"done": "done"}
