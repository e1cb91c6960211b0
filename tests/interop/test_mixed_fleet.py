"""A mixed fleet on one broker and one Redis result store: real Celery and real taskworker processes.

Each class's worker fixture runs one kind of worker only, so a result proves
which side ran it (``whoami`` returns the worker's ``-n`` name):

* a Celery client (the in-process ``tests.interop.celery_app``) sends to
  ``manage.py taskworker``, and Celery's ``AsyncResult`` reads what our
  worker stored;
* our client sends to ``celery worker``, and our ``AsyncResult`` reads what
  Celery's worker stored.

Both brokers (Redis, RabbitMQ) through ``interop_broker``.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import celery
import pytest
import redis
from celery.result import AsyncResult as CeleryAsyncResult

from django_tasks_q import AsyncResult, chord, group
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import ChordError
from testproject.videos.tasks import add, echo, fail, naps, tally, whoami
from testproject.videos.workflow_tasks import record_id
from tests.interop.celery_app import app
from tests.interop.processes import celery_worker
from tests.workers import WorkerProcess

V = "testproject.videos.tasks."
W = "testproject.videos.workflow_tasks."


@pytest.fixture(scope="class")
def ours(interop_broker, result_redis_url, django_db_blocker):
    env = {"TASKS_Q_RESULT_BACKEND": result_redis_url}
    with WorkerProcess(interop_broker, "-Q", "default,videos", "-P", "threads", "-c", "2", "-n", "ours@%h",
                       env=env) as worker:
        yield worker


@pytest.fixture(scope="class")
def theirs(interop_broker, result_redis_url):
    # prefork: Celery enforces time limits only there
    with celery_worker(interop_broker, result_backend=result_redis_url, name="celery@%h", pool="prefork",
                       extra=("-c", "1")) as worker:
        yield worker


def send(name: str, *args, **options) -> CeleryAsyncResult:
    return app.send_task(V + name, args=args, **options)


# -- Celery client -> taskworker ------------------------------------------------------------------

class TestCeleryClientOurWorker:
    def test_celery_clients_tasks_run_on_our_worker_with_their_options(self, ours, clients):
        assert send("add", 2, 3).get(timeout=20) == 5
        me = send("whoami", retries=2, priority=5).get(timeout=20)
        assert me["hostname"].startswith("ours@") and me["retries"] == 2

        sent = time.time()
        later = send("whoami", countdown=1.5).get(timeout=20)
        assert later["eta"] and datetime.fromisoformat(later["eta"]).timestamp() >= sent + 1.4
        assert time.time() - sent >= 1.4  # the eta was honoured

        expired = send("add", 1, 1, expires=datetime.now(timezone.utc) - timedelta(seconds=5))
        with pytest.raises(Exception, match="(?i)expired|revoked"):
            expired.get(timeout=20)
        assert AsyncResult(expired.id).state == TaskState.REVOKED

        # Celery's timelimit header is [hard, soft]: a swap would give a 10 s soft limit and no report
        napped = send("naps", 3, 0.05, time_limit=10, soft_time_limit=0.3).get(timeout=20)
        assert "soft_limit" in napped and napped["after"] < 2

        with pytest.raises(ValueError, match="from celery"):
            send("fail", "from celery").get(timeout=20)


    def test_celery_clients_links_chains_groups_and_chords_run_on_our_worker(self, ours, clients, tmp_path):
        values, errback = tmp_path / "values", tmp_path / "errback"
        send("add", 2, 3, link=app.signature(W + "record_value", args=(str(values),))).get(timeout=20)
        failed = send("fail", "x", link_error=app.signature(W + "record_id", kwargs={"path": str(errback)}))
        with pytest.raises(ValueError):
            failed.get(timeout=20)
        wait_for_file(values)
        wait_for_file(errback)
        assert json.loads(values.read_text()) == 5 and json.loads(errback.read_text()) == failed.id

        chained = celery.chain(app.signature(V + "add", (1, 1)), app.signature(V + "add", (10,)),
                               app.signature(V + "add", (100,))).apply_async()
        assert chained.get(timeout=20) == 112

        members = celery.group(app.signature(V + "add", (i, i)) for i in range(4)).apply_async()
        assert members.get(timeout=20) == [0, 2, 4, 6]

        tallies = tmp_path / "tally"
        body = celery.chord([app.signature(V + "add", (i, i)) for i in range(4)],
                            app.signature(V + "tally", (str(tallies),))).apply_async()
        assert body.get(timeout=20) == 12
        time.sleep(0.5)
        assert tallies.read_text().splitlines() == ["4 12"]  # the body ran once


    def test_our_chords_count_on_celerys_redis_keys_fire_once_or_fail(self, ours, clients, tmp_path):
        tallies = tmp_path / "tally"
        joined = chord([add.s(i, i) for i in range(5)], tally.s(str(tallies))).apply_async()
        assert joined.get(timeout=20) == 20
        assert CeleryAsyncResult(joined.id, app=app).get(timeout=5) == 20  # Celery reads it too
        time.sleep(0.5)
        assert tallies.read_text().splitlines() == ["5 20"]

        broken = chord([add.s(1, 1), fail.si("member"), add.s(2, 2)], tally.s(str(tallies))).apply_async()
        with pytest.raises(ChordError, match="member"):
            broken.get(timeout=20)
        time.sleep(0.5)
        assert tallies.read_text().splitlines() == ["5 20"]  # the body never ran
        keys = redis.Redis.from_url(app.conf.result_backend).keys(f"celery-taskset-meta-{broken.parent.id}*")
        assert keys == [f"celery-taskset-meta-{broken.parent.id}.c".encode()]  # only the "done" marker is left


# -- our client -> celery worker ------------------------------------------------------------------

class TestOurClientCeleryWorker:
    def test_our_tasks_and_canvas_run_on_a_celery_worker(self, theirs, clients, tmp_path):
        assert add.delay(2, 3).get(timeout=20) == 5
        me = whoami.apply_async(countdown=1).get(timeout=20)
        assert me["hostname"].startswith("celery@") and me["eta"]
        # our timelimit header is Celery's [hard, soft]: swapped, the soft limit would be 10 s
        napped = naps.apply_async((3, 0.05), time_limit=10, soft_time_limit=0.3).get(timeout=20)
        assert "soft_limit" in napped and napped["after"] < 2
        expired = add.apply_async((1, 1), expires=datetime.now(timezone.utc) - timedelta(seconds=5))
        with pytest.raises(Exception, match="(?i)expired|revoked"):
            expired.get(timeout=20)
        assert expired.state == TaskState.REVOKED  # Celery's worker revoked it and stored REVOKED

        callback = echo.s()
        link_result = callback.freeze()
        assert add.apply_async((4, 4), link=callback).get(timeout=20) == 8
        assert link_result.get(timeout=20) == {"args": [8], "kwargs": {}}
        errback = tmp_path / "errback"
        failed = fail.apply_async(("on celery",), link_error=record_id.s(path=str(errback)))
        with pytest.raises(ValueError, match="on celery"):
            failed.get(timeout=20)
        wait_for_file(errback)
        assert json.loads(errback.read_text()) == failed.id  # Celery's worker sent our errback

        assert (add.s(1, 1) | add.s(10) | add.s(100)).apply_async().get(timeout=20) == 112
        assert group(add.s(i, i) for i in range(4)).apply_async().get(timeout=20) == [0, 2, 4, 6]
        # the chord's members are counted by Celery's worker on Celery's Redis chord keys
        joined = chord([add.s(i, i) for i in range(4)], echo.s()).apply_async()
        assert joined.get(timeout=20) == {"args": [[0, 2, 4, 6]], "kwargs": {}}
        assert str(uuid.UUID(joined.id)) == joined.id


def wait_for_file(path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path.name} was never written"
