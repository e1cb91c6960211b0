"""Our client's messages on a real ``celery worker``: the rows ``test_mixed_fleet.py`` leaves out.

Only a Celery worker consumes here (``-n celery@%h``, solo pool, so tasks
run in the order they arrive), one per broker, with the Redis result backend
our settings point at too, so our ``AsyncResult`` reads what it stores.

* priorities: on RabbitMQ higher runs first; on Redis our priorities 0, 3,
  6 and 9 reach a Celery worker with its default four steps and run in our
  order (higher first), as docs/routing.md says. The messages are queued
  before the worker starts, so the broker's order is the only order there is.
* ``send_task`` by name; an absolute ``eta`` is honoured and reaches the
  Celery task's ``request.eta``; our ``retries`` header reaches
  ``request.retries``;
* our group's ``group`` header and our chain's ``parent_id`` headers reach
  Celery's worker (it stores them in Celery's result documents).

``delay``, countdown, expires, time limits, link, link_error, chain, group
and chord are in ``test_mixed_fleet.py``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from django_tasks_q import group, send_task
from testproject.videos.tasks import add, mark, whoami
from tests.interop.processes import CeleryProcess, celery_worker, stored

pytestmark = pytest.mark.django_db(transaction=True)
V = "testproject.videos.tasks."

#: the module's worker once it runs: the priority test must queue its messages before that
_started: list[CeleryProcess] = []


@pytest.fixture(scope="module")
def theirs(interop_broker, result_redis_url):
    worker = celery_worker(interop_broker, result_backend=result_redis_url, name="celery@%h", pool="solo")
    with worker:
        _started.append(worker)
        yield worker
        _started.clear()
        print(worker.output())  # shown when a test failed


def test_our_priorities_keep_our_order_on_a_celery_worker(request, clients, interop_broker, tmp_path):
    assert not _started, "this test queues its messages before the module's worker starts: run it first"
    order = tmp_path / "order"
    # FIFO would run them in the order sent; on Redis only 0, 3, 6 and 9 reach Celery's default four steps
    sent = [1, 5, 9] if interop_broker.startswith("amqp") else [0, 3, 6, 9]
    results = [mark.apply_async((str(order), f"p{p}"), queue="videos", priority=p) for p in sent]

    request.getfixturevalue("theirs")
    assert [r.get(timeout=20) for r in results] == [f"p{p}" for p in sent]
    assert [line.split()[0] for line in order.read_text().splitlines()] == [f"p{p}" for p in reversed(sent)]


def test_send_task_eta_retries_and_lineage_on_a_celery_worker(theirs, clients, result_redis_url):
    assert send_task(V + "add", (2, 3)).get(timeout=20) == 5

    eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    me = whoami.apply_async(eta=eta, retries=3).get(timeout=20)
    assert time.time() >= eta.timestamp()  # not run before its eta
    assert me["hostname"].startswith("celery@") and me["retries"] == 3
    assert abs(datetime.fromisoformat(me["eta"]) - eta) < timedelta(milliseconds=1)

    grouped = group(add.s(i, i) for i in range(3)).apply_async()
    assert grouped.get(timeout=20) == [0, 2, 4]
    assert [stored(result_redis_url, r.id)["group_id"] for r in grouped.results] == [grouped.id] * 3

    chained = (add.s(1, 1) | add.s(10) | add.s(100)).apply_async()
    assert chained.get(timeout=20) == 112
    assert stored(result_redis_url, chained.id)["parent_id"] == chained.parent.id
    assert stored(result_redis_url, chained.parent.id)["parent_id"] == chained.parent.parent.id
