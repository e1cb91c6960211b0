"""A Celery client's messages on ``manage.py taskworker``: the rows ``test_mixed_fleet.py`` leaves out.

Only our worker consumes here (``-n ours@%h``, one thread, so tasks run in
the order they arrive), one per broker; the in-process Celery app
(``tests.interop.celery_app``) sends; results go to the shared Redis result
database and are read with our ``AsyncResult`` / ``GroupResult`` or, for the
headers a worker records, straight from Celery's ``celery-task-meta-<id>``
documents.

* priorities: on RabbitMQ higher runs first; on Redis a Celery client's
  priorities keep Celery's meaning (0 first) on our worker, as
  docs/routing.md says. The messages are queued before the worker starts,
  so the broker's order is the only order there is.
* an absolute ``eta`` is honoured and reaches ``request.eta`` unchanged;
* the ``group`` and ``parent_id`` headers of Celery's group and chain reach
  our worker (it stores them), and our ``GroupResult`` reads Celery's group.

Run-of-the-mill rows (``send_task``, countdown, expires, retries, time
limits, link, link_error, chain, group, chord) are in ``test_mixed_fleet.py``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import celery
import pytest

from django_tasks_q import AsyncResult, GroupResult
from tests.interop.celery_app import app
from tests.interop.processes import stored
from tests.workers import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)
V = "testproject.videos.tasks."

#: the module's worker once it runs: the priority test must queue its messages before that
_started: list[WorkerProcess] = []


@pytest.fixture(scope="module")
def ours(interop_broker, result_redis_url):
    worker = WorkerProcess(interop_broker, "-Q", "default,videos", "-P", "threads", "-c", "1", "-n", "ours@%h",
                           env={"TASKS_Q_RESULT_BACKEND": result_redis_url})
    with worker:
        _started.append(worker)
        yield worker
        _started.clear()
        print(worker.output())  # shown when a test failed


def send(name: str, *args, **options) -> AsyncResult:
    """Celery's ``send_task``; the id read back through our ``AsyncResult``."""
    return AsyncResult(app.send_task(V + name, args=args, **options).id)


def test_priorities_of_a_celery_client_keep_their_order_on_our_worker(request, clients, interop_broker, tmp_path):
    assert not _started, "this test queues its messages before the module's worker starts: run it first"
    order = tmp_path / "order"
    if interop_broker.startswith("amqp"):
        sent, expected = [1, 5, 9], ["p9", "p5", "p1"]  # RabbitMQ, x-max-priority 10: higher first
    else:
        sent, expected = [9, 6, 3, 0], ["p0", "p3", "p6", "p9"]  # Celery's meaning on Redis: 0 first, kept
    results = [send("mark", str(order), f"p{p}", queue="videos", priority=p) for p in sent]  # FIFO is the reverse

    request.getfixturevalue("ours")
    assert [r.get(timeout=20) for r in results] == [f"p{p}" for p in sent]
    assert [line.split()[0] for line in order.read_text().splitlines()] == expected


def test_eta_group_and_chain_headers_reach_our_worker(ours, clients, result_redis_url):
    eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    me = send("whoami", eta=eta, retries=1).get(timeout=20)
    assert time.time() >= eta.timestamp()  # not run before its eta
    assert me["hostname"].startswith("ours@") and me["retries"] == 1
    assert abs(datetime.fromisoformat(me["eta"]) - eta) < timedelta(milliseconds=1)

    grouped = celery.group(app.signature(V + "add", (i, i)) for i in range(3)).apply_async()
    ours_view = GroupResult(grouped.id, [AsyncResult(r.id) for r in grouped.results])
    assert ours_view.get(timeout=20) == [0, 2, 4]
    assert [stored(result_redis_url, r.id)["group_id"] for r in grouped.results] == [grouped.id] * 3

    chained = celery.chain(app.signature(V + "add", (1, 1)), app.signature(V + "add", (10,)),
                           app.signature(V + "add", (100,))).apply_async()
    assert AsyncResult(chained.id).get(timeout=20) == 112
    assert stored(result_redis_url, chained.id)["parent_id"] == chained.parent.id
    assert stored(result_redis_url, chained.parent.id)["parent_id"] == chained.parent.parent.id
