"""The Redis result backend against the real ``celery`` package, in both directions.

Our ``RedisBackend`` and Celery's Redis backend point at the same Redis
database; each side writes and the other reads: values, exceptions (same
type), custom states, the extended fields, saved groups. ``get()`` waits on
the key's pub/sub channel.
"""

from __future__ import annotations

import gc
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
import redis
from celery.result import AsyncResult as CeleryAsyncResult
from celery.result import GroupResult as CeleryGroupResult

from django_tasks_q import AsyncResult, GroupResult
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import TimeoutError
from django_tasks_q.results.backend import describe_exception, get_backend
from django_tasks_q.results.redis import RedisBackend
from tests.interop.celery_app import app


@pytest.fixture
def both(settings, result_redis_url):
    """Our settings and the Celery app on the same Redis result database."""
    settings.TASKS_Q = {**settings.TASKS_Q, "RESULT_BACKEND": result_redis_url, "RESULT_EXPIRES": 600}
    previous = app.conf.result_backend
    app.conf.result_backend = result_redis_url
    app.__dict__.pop("backend", None)  # celery caches the backend object per app
    app._local.__dict__.pop("backend", None)
    yield get_backend()
    # Celery's AsyncResult unsubscribes in __del__, possibly at exit when the server is gone: do it now
    gc.collect()
    consumer = app.backend.result_consumer
    consumer.stop()
    consumer.subscribed_to.clear()
    app.conf.result_backend = previous
    app._local.__dict__.pop("backend", None)


def request(task: str, **more) -> SimpleNamespace:
    fields = dict(task=task, args=(2, 3), kwargs={"k": 1}, hostname="ours@test", retries=1,
                  delivery_info={"routing_key": "videos"}, group_id=None, parent_id="p-1")
    return SimpleNamespace(**{**fields, **more})


def test_celery_reads_what_we_store(both):
    assert isinstance(both, RedisBackend)
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    both.mark(ok, TaskState.SUCCESS, result={"sum": 5}, request=request("testproject.videos.tasks.add"))
    both.mark(bad, TaskState.FAILURE, result=describe_exception(ValueError("boom")), traceback="Traceback ...",
              request=request("testproject.videos.tasks.fail"))

    theirs = CeleryAsyncResult(ok, app=app)
    assert theirs.get(timeout=5) == {"sum": 5}
    assert theirs.name == "testproject.videos.tasks.add" and theirs.args == [2, 3] and theirs.kwargs == {"k": 1}
    assert theirs.worker == "ours@test" and theirs.retries == 1 and theirs.queue == "videos"
    assert theirs.date_done is not None
    with pytest.raises(ValueError, match="boom"):
        CeleryAsyncResult(bad, app=app).get(timeout=5)
    assert CeleryAsyncResult(bad, app=app).traceback == "Traceback ..."
    ttl = redis.Redis.from_url(app.conf.result_backend).ttl(f"celery-task-meta-{ok}")
    assert 0 < ttl <= 600  # RESULT_EXPIRES


def test_we_read_what_celery_stores(both):
    ok, bad, busy = (str(uuid.uuid4()) for _ in range(3))
    app.backend.store_result(ok, [1, "two"], "SUCCESS")
    app.backend.mark_as_failure(bad, KeyError("missing"), traceback="Traceback (celery)")
    app.backend.store_result(busy, {"current": 3, "total": 10}, "PROGRESS")

    assert AsyncResult(ok).get(timeout=5) == [1, "two"] and AsyncResult(ok).date_done is not None
    with pytest.raises(KeyError, match="missing"):
        AsyncResult(bad).get(timeout=5)
    assert AsyncResult(bad).state == TaskState.FAILURE and AsyncResult(bad).traceback == "Traceback (celery)"
    assert AsyncResult(busy).state == "PROGRESS" and AsyncResult(busy).info == {"current": 3, "total": 10}
    assert AsyncResult(str(uuid.uuid4())).state == TaskState.PENDING


def test_get_wakes_on_the_published_result_and_times_out(both):
    task_id = str(uuid.uuid4())
    threading.Timer(0.4, lambda: app.backend.store_result(task_id, 42, "SUCCESS")).start()
    threading.Timer(0.2, lambda: both.mark(task_id, "PROGRESS", result={"current": 1})).start()
    started = time.monotonic()
    assert AsyncResult(task_id).get(timeout=10) == 42
    assert 0.35 < time.monotonic() - started < 3  # woken by the publish, not by a slow poll

    with pytest.raises(TimeoutError, match="not ready after 0.3s"):
        AsyncResult(str(uuid.uuid4())).get(timeout=0.3)


def test_saved_groups_restore_on_both_sides(both):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for index, task_id in enumerate(ids):
        both.mark(task_id, TaskState.SUCCESS, result=index * 10)
    ours = GroupResult(str(uuid.uuid4()), [AsyncResult(i) for i in ids]).save()
    theirs = CeleryGroupResult.restore(ours.id, app=app)
    assert [r.id for r in theirs.results] == ids and theirs.get(timeout=5) == [0, 10, 20]

    celery_group = CeleryGroupResult(str(uuid.uuid4()), [CeleryAsyncResult(i, app=app) for i in ids], app=app)
    celery_group.save()
    restored = GroupResult.restore(celery_group.id)
    assert [r.id for r in restored] == ids and restored.get(timeout=5) == [0, 10, 20]
    restored.delete()
    assert GroupResult.restore(celery_group.id) is None
