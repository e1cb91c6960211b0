"""Chords shared with Celery on the Redis result backend: real ``celery worker`` and ``taskworker`` processes.

One worker of each kind per broker, on different queues, so where a task
is routed says which side runs it: the Celery worker consumes ``videos``,
ours consumes ``default``. Both count chord members on Celery's chord keys
(``celery-taskset-meta-<gid>.s/.j/.d/.t/.c``), so

* our client's chord can run entirely on a Celery worker, which fires our
  body once;
* one chord's header can be split between the two kinds of worker, and
  whichever finishes the header last fires the body, once;
* a Celery client's chord whose member fails on our worker fails: Celery's
  ``AsyncResult.get()`` raises a ``ChordError``, the body never runs, its
  errback is sent, and a chain member failing midway fails it too. (Celery's
  own ``get()`` on the chord's result re-raises the failed member's error
  first, as Celery does: its parent failed.)

(``test_mixed_fleet.py`` covers a Celery client's successful chord on our
worker and our chord on a Celery worker with ``echo``.)
"""

from __future__ import annotations

import json
import time

import celery
import pytest
import redis
from celery.result import AsyncResult as CeleryAsyncResult

from django_tasks_q import AsyncResult, chord
from django_tasks_q.core.states import TaskState
from testproject.videos.tasks import add, sleep, tally
from tests.integration.test_spine import wait_until
from tests.interop.celery_app import app
from tests.interop.processes import celery_worker, stored
from tests.workers import WorkerProcess

V = "testproject.videos.tasks."
W = "testproject.videos.workflow_tasks."


@pytest.fixture(scope="module")
def workers(interop_broker, result_redis_url, django_db_blocker):
    """A Celery worker on ``videos`` and ours on ``default``, sharing the Redis result database."""
    with celery_worker(interop_broker, queues="videos", result_backend=result_redis_url, name="celery@%h"), \
            WorkerProcess(interop_broker, "-Q", "default", "-P", "threads", "-c", "2", "-n", "ours@%h",
                          env={"TASKS_Q_RESULT_BACKEND": result_redis_url}) as ours:
        yield ours


@pytest.fixture
def clients(clients, result_redis_url, workers):
    """The shared clients (tests/interop/conftest.py), with both workers up; the raw result store."""
    return redis.Redis.from_url(result_redis_url)


#: Celery 5.7 claims the body (``.c``) and deletes every other counting key; 5.5 and 5.6 do neither
CELERY_CLAIMS_CHORDS = tuple(int(part) for part in celery.__version__.split(".")[:2]) >= (5, 7)


def only_done_marker_left(raw: redis.Redis, group_id: str) -> bool:
    base = f"celery-taskset-meta-{group_id}"
    if CELERY_CLAIMS_CHORDS:
        return raw.keys(base + "*") == [f"{base}.c".encode()] and raw.get(base + ".c") == b"done"
    # A Celery 5.5/5.6 worker that sends the body deletes the keys it knows (.j, .t), not ours (.d, .c):
    # those must be all that is left, and expire.
    left = raw.keys(base + "*")
    return (set(left) <= {f"{base}.d".encode(), f"{base}.c".encode()}
            and all(raw.ttl(key) > 0 for key in left))


def test_our_chord_on_a_celery_worker_and_split_between_both_fires_once(clients, tmp_path):
    raw = clients
    # entirely on the Celery worker: it counts on the keys our client wrote and sends our body
    tallies = tmp_path / "celery-only"
    joined = chord([add.s(i, i).set(queue="videos") for i in range(4)],
                   tally.s(str(tallies)).set(queue="videos")).apply_async()
    assert joined.get(timeout=20) == 12
    assert stored(raw, joined.id)["worker"].startswith("celery@")  # the body ran there
    assert [stored(raw, r.id)["worker"].split("@")[0] for r in joined.parent.results] == ["celery"] * 4

    # one header split between the two kinds of worker: the slow member decides who sends the body
    for slow_queue in ("videos", "default"):
        fast_queue = "default" if slow_queue == "videos" else "videos"
        split = tmp_path / f"split-{slow_queue}"
        result = chord([sleep.si(1).set(queue=slow_queue), add.s(1, 1).set(queue=fast_queue),
                        add.s(2, 2).set(queue=fast_queue)], tally.s(str(split))).apply_async()
        assert result.get(timeout=20) == 7
        assert CeleryAsyncResult(result.id, app=app).get(timeout=5) == 7
        workers = {stored(raw, r.id)["worker"].split("@")[0] for r in result.parent.results}
        assert workers == {"celery", "ours"}
        # the worker that sent the body deletes the counting keys just after: the body may finish first
        wait_until(lambda: only_done_marker_left(raw, result.parent.id), timeout=5)

    time.sleep(0.5)  # a second run of any body would have landed by now
    assert tallies.read_text().splitlines() == ["4 12"]
    for slow_queue in ("videos", "default"):
        assert (tmp_path / f"split-{slow_queue}").read_text().splitlines() == ["3 7"]


def test_celery_clients_chord_fails_on_our_worker_when_a_member_fails(clients, tmp_path):
    raw = clients
    tallies, errback = tmp_path / "tally", tmp_path / "errback"
    body = app.signature(V + "tally", (str(tallies),),
                         link_error=app.signature(W + "record_id", kwargs={"path": str(errback)}))
    broken = celery.chord([app.signature(V + "add", (1, 1)), app.signature(V + "fail", ("celery member",)),
                           app.signature(V + "add", (2, 2))], body).apply_async()
    with pytest.raises(ValueError, match="celery member"):  # Celery's get() re-raises a failed parent's error
        broken.get(timeout=20)
    with pytest.raises(Exception) as raised:  # the body itself: Celery makes up a class for our ChordError
        settled(CeleryAsyncResult(broken.id, app=app)).get(timeout=20)
    assert type(raised.value).__name__ == "ChordError" and "ValueError: celery member" in str(raised.value)
    assert AsyncResult(broken.id).state == TaskState.FAILURE
    _wait_for(errback)
    assert json.loads(errback.read_text()) == broken.id  # the body's errback, with the body's id
    assert stored(raw, broken.id)["status"] == "FAILURE"
    wait_until(lambda: only_done_marker_left(raw, broken.parent.id), timeout=5)

    # a chain in the header failing before its last step: that step is counted as failed, no stall
    midway = celery.chord([app.signature(V + "add", (1, 1)),
                           celery.chain(app.signature(V + "fail", ("midway",)), app.signature(V + "add", (10,)))],
                          app.signature(V + "tally", (str(tallies),))).apply_async()
    with pytest.raises(Exception, match="midway") as raised:
        settled(CeleryAsyncResult(midway.id, app=app)).get(timeout=20)
    assert type(raised.value).__name__ == "ChordError"
    time.sleep(0.5)
    assert not tallies.exists()  # no body ever ran


def settled(result: CeleryAsyncResult, timeout: float = 20) -> CeleryAsyncResult:
    """``result`` once Celery reads it as ready (which caches it in the AsyncResult).

    Celery 5.5's ``get()`` on the Redis backend can wait on its pub/sub channel for a result that was
    stored before it subscribed, and time out (seen in 1 of 2 runs with kombu 5.5.2 on RabbitMQ: the body's
    FAILURE was in Redis all along). Reading the state first is Celery's own path to the stored result.
    """
    wait_until(lambda: result.ready(), timeout=timeout)
    return result


def _wait_for(path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path.name} was never written"
