"""Routing end to end on the three brokers: workers per queue, admin-edited
routes moving new tasks without restarts, and priority order."""

from __future__ import annotations

import subprocess
import time

import pytest

from django_tasks_q import send_task
from django_tasks_q.core.routing import REFRESH
from django_tasks_q.exceptions import InvalidTaskOptions
from django_tasks_q.models import Queue, TaskResult, TaskRoute
from testproject.videos.tasks import add, echo, sleep
from tests.workers import ROOT, WorkerProcess

from .test_spine import wait_until


@pytest.fixture(params=["django", "redis", "amqp"])
def broker(request, settings, transactional_db):
    url = "django://" if request.param == "django" else request.getfixturevalue(f"{request.param}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    return url


def worker_of(result) -> str:
    return TaskResult.objects.get(task_id=result.id).worker


def test_tasks_land_on_the_worker_of_their_queue_and_admin_edits_move_them(broker, admin_client):
    from django.urls import reverse

    from .test_admin_routing import route_data

    videos, images = Queue.objects.create(name="videos-q"), Queue.objects.create(name="images-q")
    route = TaskRoute.objects.create(pattern="testproject.videos.tasks.echo", queue=videos, order=1)
    time.sleep(REFRESH + 0.1)  # this process's route table sees the new rows
    with WorkerProcess(broker, "-P", "solo", "-Q", "videos-q", "-n", "videos@%h"), \
            WorkerProcess(broker, "-P", "solo", "-Q", "images-q", "-n", "images@%h"):
        to_videos = [echo.delay("v", i) for i in range(3)]
        to_images = [add.apply_async((i, i), queue="images-q") for i in range(3)]
        for result in to_videos:
            result.get(timeout=20)
            assert worker_of(result).startswith("videos@")
        for result in to_images:
            result.get(timeout=20)
            assert worker_of(result).startswith("images@")
        # staff point the route at images-q: new tasks move, nothing restarts
        change = reverse("admin:django_tasks_q_taskroute_change", args=[route.pk])
        edited = admin_client.post(change, route_data(images, pattern="testproject.videos.tasks.echo", order="1"))
        assert edited.status_code == 302 and TaskRoute.objects.get(pk=route.pk).queue == images
        time.sleep(REFRESH + 0.1)
        moved = echo.delay("moved")
        moved.get(timeout=20)
        assert worker_of(moved).startswith("images@")


def test_higher_priority_runs_first_on_every_broker(broker):
    Queue.objects.create(name="prio", max_priority=9)
    time.sleep(REFRESH + 0.1)
    # the worker is busy with a sleep while the queue fills, then takes them by priority
    with WorkerProcess(broker, "-P", "solo", "-Q", "prio", "--prefetch-multiplier", "1"):
        blocker = sleep.apply_async((1.5,), queue="prio")
        wait_until(lambda: blocker.state == "STARTED", timeout=15)
        sent = [echo.apply_async(("p", p), queue="prio", priority=p) for p in (1, 5, 9, 3, 7)]
        for result in sent:
            result.get(timeout=30)
    started = {p: TaskResult.objects.get(task_id=r.id).date_started for p, r in zip((1, 5, 9, 3, 7), sent)}
    order = sorted(started, key=started.get)
    # one message may have been prefetched before the others arrived; the rest run highest first
    assert order[1:] == sorted(order[1:], reverse=True), f"ran in priority order {order}"


def test_priority_outside_what_the_queue_orders_is_refused(broker):
    Queue.objects.create(name="prio-small", max_priority=3)
    time.sleep(REFRESH + 0.1)
    with pytest.raises(InvalidTaskOptions, match="above 3"):
        send_task("testproject.videos.tasks.add", args=[1, 1], queue="prio-small", priority=7)


def test_a_declaration_the_broker_refuses_is_a_clear_error_and_the_publisher_recovers(amqp_url, settings,
                                                                                        transactional_db):
    from django_tasks_q.exceptions import ImproperlyConfigured

    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": amqp_url,
                        "QUEUES": {**settings.TASKS_Q["QUEUES"], "strict": {"max_priority": 5}}}
    add.apply_async((1, 1), queue="strict")  # declared with x-max-priority 5
    settings.TASKS_Q = {**settings.TASKS_Q, "QUEUES": {**settings.TASKS_Q["QUEUES"], "strict": {}}}
    from django_tasks_q.broker.queues import _cached_queue

    _cached_queue.cache_clear()
    from django_tasks_q.broker import connection

    connection.reset()  # a new process with other settings
    with pytest.raises(ImproperlyConfigured, match="to queue 'strict'.*refused it.*PRECONDITION_FAILED"):
        add.apply_async((1, 1), queue="strict")
    assert add.apply_async((1, 1), queue="other-queue").id  # the next publish works


@pytest.mark.parametrize("kind", ["django", "redis", "amqp"])
def test_fanout_queue_delivers_one_copy_to_every_worker(kind, request, settings, transactional_db):
    url = "django://" if kind == "django" else request.getfixturevalue(f"{kind}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    Queue.objects.create(name="everyone", exchange="everyone", exchange_type="fanout")
    time.sleep(REFRESH + 0.1)
    with WorkerProcess(url, "-P", "solo", "-Q", "everyone", "-n", "first@%h") as first, \
            WorkerProcess(url, "-P", "solo", "-Q", "everyone", "-n", "second@%h") as second:
        result = echo.apply_async(("hello all",), queue="everyone")
        first.wait_for(f"[{result.id}] succeeded", timeout=20)
        second.wait_for(f"[{result.id}] succeeded", timeout=20)
        plain = add.apply_async((2, 2), queue="videos")  # an ordinary queue is not broadcast
        assert plain.id not in first.output() + second.output()


@pytest.mark.parametrize("kind", ["django", "redis", "amqp"])
def test_topic_exchange_routes_like_amqp(kind, request, settings, transactional_db):
    from .broker_tools import declare, queue_size

    url = "django://" if kind == "django" else request.getfixturevalue(f"{kind}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    bindings = {"t-video": "media.video.#", "t-all": "media.#", "t-one": "media.*"}
    for name, key in bindings.items():
        Queue.objects.create(name=name, exchange="media", exchange_type="topic", routing_key=key)
    time.sleep(REFRESH + 0.1)
    for name in bindings:  # workers consuming them would declare these bindings
        declare(url, name)
    expected = {"media.video": {"t-video", "t-all", "t-one"}, "media.video.hd": {"t-video", "t-all"},
                "media.image": {"t-all", "t-one"}, "other.video": set()}
    for key, targets in expected.items():
        before = {name: queue_size(url, name) for name in bindings}
        if not targets and kind != "amqp":  # AMQP drops an unroutable message; django:// and Redis refuse to send it
            from django_tasks_q.exceptions import ImproperlyConfigured

            with pytest.raises(ImproperlyConfigured, match="NO_ROUTE" if kind == "django" else "no queue is bound"):
                send_task("testproject.videos.tasks.noop", queue="t-all", routing_key=key)
            continue
        send_task("testproject.videos.tasks.noop", queue="t-all", routing_key=key)
        after = {name: queue_size(url, name) for name in bindings}
        assert {name for name in bindings if after[name] == before[name] + 1} == targets, key


@pytest.mark.parametrize("kind", ["django", "redis"])
def test_the_first_send_of_a_process_with_a_key_no_binding_matches_is_refused(kind, request, settings,
                                                                               transactional_db):
    """The first send to a queue goes through kombu, which on Redis would drop it without a word."""
    from django_tasks_q.broker import connection
    from django_tasks_q.exceptions import ImproperlyConfigured

    from .broker_tools import declare, queue_size

    url = "django://" if kind == "django" else request.getfixturevalue(f"{kind}_url")
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url}
    Queue.objects.create(name="first-only", exchange="first-x", exchange_type="direct", routing_key="first.key")
    time.sleep(REFRESH + 0.1)
    declare(url, "first-only")  # a worker consuming it declared it
    connection.reset()  # a process that has sent nothing yet
    refused = "NO_ROUTE" if kind == "django" else "no queue is bound"
    with pytest.raises(ImproperlyConfigured, match=rf"{refused}.*'first-x'.*'wrong.key'"):
        send_task("testproject.videos.tasks.noop", queue="first-only", routing_key="wrong.key")
    assert queue_size(url, "first-only") == 0
    send_task("testproject.videos.tasks.noop", queue="first-only")  # its own key still routes
    assert queue_size(url, "first-only") == 1


def test_worker_start_with_a_declaration_the_broker_refuses_exits_with_a_clear_error(amqp_url, settings,
                                                                                        transactional_db):
    from kombu import Connection, Exchange

    with Connection(amqp_url) as conn:
        Exchange("clash", type="direct", durable=True)(conn.default_channel).declare()
    Queue.objects.create(name="clash-q", exchange="clash", exchange_type="topic", routing_key="clash.#")
    worker = WorkerProcess(amqp_url, "-P", "solo", "-Q", "clash-q")
    worker.process = subprocess.Popen(worker.args, cwd=ROOT, env=worker.env, stdout=worker.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert worker.process.wait(30) != 0  # exits: retrying cannot fix a refused declaration
        out = worker.output()
        assert "refused queue 'clash-q'" in out and "exchange 'clash' (topic)" in out and "PRECONDITION_FAILED" in out
    finally:
        worker.kill()
