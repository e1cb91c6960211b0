"""Celery's own CLI steering our worker at run time: ``celery control add_consumer / cancel_consumer /
pool_grow / time_limit`` against ``manage.py taskworker`` on Redis, read back with ``celery inspect``."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from testproject.videos.tasks import add, naps
from tests.integration.broker_tools import purge
from tests.workers import WorkerProcess

from .processes import run_celery

pytestmark = pytest.mark.django_db(transaction=True)
NAME = "steered@tests"
QUEUE = "celery-added"


def celery_json(broker_url: str, *args: str) -> dict:
    """``celery <args> --json -d NAME``: the replies by node name (``inspect`` prints a dict, ``control`` a list)."""
    done = run_celery(broker_url, *args, "--json", "-d", NAME, "-t", "5")
    assert done.returncode == 0, f"celery {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    replies = json.loads([line for line in done.stdout.splitlines() if line.startswith(("{", "["))][-1])
    return replies if isinstance(replies, dict) else {k: v for reply in replies for k, v in reply.items()}


@pytest.fixture
def app(redis_url):
    celery = Celery("steering-client", broker=redis_url, set_as_current=False)
    celery.conf.accept_content = ["json"]
    yield celery
    celery.close()


def test_celery_control_changes_queues_pool_and_time_limits_of_our_worker(redis_url, broker, app):
    broker(redis_url)
    purge(redis_url, QUEUE)
    with WorkerProcess(redis_url, "-Q", "default", "-P", "threads", "-c", "1", "-n", NAME) as worker:
        # the CLI, as users type it
        assert celery_json(redis_url, "control", "add_consumer", QUEUE) == {NAME: {"ok": f"add consumer {QUEUE}"}}
        assert add.apply_async((2, 5), queue=QUEUE).get(timeout=15) == 7
        inspect = app.control.inspect(destination=[NAME], timeout=5)
        assert [q["name"] for q in inspect.active_queues()[NAME]] == ["default", QUEUE]
        assert celery_json(redis_url, "control", "add_consumer", QUEUE) == {
            NAME: {"error": f"already consuming from {QUEUE}"}}

        # Celery's client API (what Flower's buttons call)
        control = app.control
        assert control.pool_grow(2, destination=[NAME], reply=True, timeout=5) == [
            {NAME: {"ok": "pool will grow to concurrency 3"}}]
        assert inspect.stats()[NAME]["pool"]["max-concurrency"] == 3
        assert control.time_limit(naps.name, soft=1, hard=30, destination=[NAME], reply=True, timeout=5) == [
            {NAME: {"ok": "time limits set successfully"}}]
        assert naps.apply_async((10,), {"chunk": 0.05}, queue=QUEUE).get(timeout=15)["soft_limit"] == \
            "soft time limit (1.0s) exceeded"

        assert celery_json(redis_url, "control", "cancel_consumer", QUEUE) == {
            NAME: {"ok": f"no longer consuming from {QUEUE}"}}
        assert [q["name"] for q in inspect.active_queues()[NAME]] == ["default"]
        assert "no longer consuming celery-added (remote control)" in worker.output()
    purge(redis_url, QUEUE)
