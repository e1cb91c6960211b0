"""``routing.resolve``: call option > task option > settings ROUTES > DEFAULT_QUEUE."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_tasks_q.core.routing import Route, resolve

ROUTES = {
    "videos.tasks.compress": {"queue": "exact", "routing_key": "media.compress", "priority": 3},
    "videos.*": {"queue": "glob", "routing_key": "media.any"},
    "reports.build": "reports-string",
}


@pytest.fixture(autouse=True)
def routes():
    with override_settings(TASKS_Q={"ROUTES": ROUTES, "DEFAULT_QUEUE": "fallback"}):
        yield


def test_default_queue_when_nothing_matches():
    assert resolve("mail.send", call={}, task={}) == Route(queue="fallback")


def test_exact_settings_route():
    assert resolve("videos.tasks.compress", call={}, task={}) == Route(
        queue="exact", routing_key="media.compress", priority=3)


def test_glob_settings_route():
    assert resolve("videos.tasks.resize", call={}, task={}) == Route(queue="glob", routing_key="media.any")


def test_glob_is_case_sensitive_and_anchored():
    assert resolve("Videos.tasks.resize", call={}, task={}).queue == "fallback"
    assert resolve("old.videos.tasks", call={}, task={}).queue == "fallback"


def test_exact_match_beats_an_earlier_glob():
    routes = {"videos.*": "glob", "videos.tasks.compress": "exact"}
    with override_settings(TASKS_Q={"ROUTES": routes}):
        assert resolve("videos.tasks.compress", call={}, task={}).queue == "exact"


def test_string_route_is_a_queue_name():
    assert resolve("reports.build", call={}, task={}) == Route(queue="reports-string")


def test_task_option_beats_settings():
    route = resolve("videos.tasks.compress", call={}, task={"queue": "task-q", "routing_key": None,
                                                              "priority": None})
    assert route.queue == "task-q"
    assert route.routing_key is None  # a weaker rule's key would point away from task-q
    assert route.priority == 3


def test_call_option_beats_task_option_and_settings():
    route = resolve("videos.tasks.compress",
                    call={"queue": "call-q", "priority": 9, "routing_key": None, "exchange": None},
                    task={"queue": "task-q", "priority": 1})
    assert route == Route(queue="call-q", routing_key=None, priority=9)


def test_priority_zero_is_a_value_not_a_gap():
    assert resolve("videos.tasks.compress", call={"priority": 0}, task={}).priority == 0


def test_no_routes_setting():
    with override_settings(TASKS_Q={}):
        assert resolve("videos.tasks.compress", call={}, task={}) == Route(queue="default")
        assert resolve("x", call={}, task={"queue": "q"}).queue == "q"


# -- TaskRoute rows (admin-edited), between task options and settings ROUTES ------------------

import time as _time  # noqa: E402

from django_tasks_q.core import routing  # noqa: E402
from django_tasks_q.models import Queue, TaskRoute  # noqa: E402


def row(pattern, queue, order=0, **fields):
    q = Queue.objects.get_or_create(name=queue)[0]
    made = TaskRoute.objects.create(pattern=pattern, queue=q, order=order, **fields)
    routing.route_table().reload()
    return made


def test_row_beats_settings_routes_but_not_task_option(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "ROUTES": {"videos.*": {"queue": "from-settings"}}}
    row("videos.*", "from-row", routing_key="rk.row", priority=4)
    assert routing.resolve("videos.compress", call={}, task={}) == routing.Route("from-row", "rk.row", None, 4)
    assert routing.resolve("videos.compress", call={}, task={"queue": "own"}).queue == "own"
    assert routing.resolve("videos.compress", call={"queue": "explicit"}, task={"queue": "own"}).queue == "explicit"


def test_first_matching_row_by_order_wins_and_disabled_rows_are_skipped():
    row("videos.*", "general", order=20)
    specific = row("videos.compress", "heavy", order=10)
    assert routing.resolve("videos.compress", call={}, task={}).queue == "heavy"
    assert routing.resolve("videos.thumbnail", call={}, task={}).queue == "general"
    TaskRoute.objects.filter(pk=specific.pk).update(enabled=False)
    routing.route_table().reload()
    assert routing.resolve("videos.compress", call={}, task={}).queue == "general"


def test_explain_names_the_deciding_rule():
    made = row("videos.*", "general", order=5)
    steps = routing.explain("videos.compress")
    decided = [s for s in steps if s.decided]
    assert len(decided) == 1 and decided[0].rule == f"TaskRoute #{made.pk} videos.* (order 5)"
    assert [s.rule for s in steps][0] == "call option" and steps[-1].rule == "DEFAULT_QUEUE"
    assert routing.explain("other.task")[-1].decided  # nothing matched: DEFAULT_QUEUE decided


def test_edits_are_seen_after_the_refresh_window_without_a_query_per_call(django_assert_num_queries, monkeypatch):
    monkeypatch.setattr(routing, "REFRESH", 0.3)
    row("videos.*", "first")
    with django_assert_num_queries(0):  # the steady state: cached
        for _ in range(50):
            assert routing.resolve("videos.x", call={}, task={}).queue == "first"
    TaskRoute.objects.update(queue=Queue.objects.get_or_create(name="second")[0])
    _time.sleep(0.35)
    with django_assert_num_queries(2):  # one reload: routes and queues
        assert routing.resolve("videos.x", call={}, task={}).queue == "second"
        assert routing.resolve("videos.x", call={}, task={}).queue == "second"


def test_queue_rows_declare_their_exchange():
    from django_tasks_q.broker.queues import get_queue

    Queue.objects.create(name="media-all", exchange="media", exchange_type="topic", routing_key="media.#",
                         max_priority=10)
    routing.route_table().reload()
    queue = get_queue("media-all")
    assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == ("media", "topic", "media.#")
    assert queue.queue_arguments == {"x-max-priority": 10}


@pytest.mark.parametrize("binding, key, expected", [
    ("media.video.#", "media.video", True), ("media.video.#", "media.video.hd.60fps", True),
    ("media.#", "media", True), ("media.*", "media.video", True), ("media.*", "media.video.hd", False),
    ("media.*", "media", False), ("#", "anything.at.all", True), ("*.video", "media.video", True),
    ("media.#.hd", "media.hd", True), ("media.#.hd", "media.video.x.hd", True), ("media.#.hd", "media.video", False),
    ("media.video", "media.video", True), ("media.video", "media.videos", False),
])
def test_topic_matching_is_amqps(binding, key, expected):
    from django_tasks_q.broker.topic import topic_matches

    assert topic_matches(binding, key) is expected


def test_a_weaker_rules_routing_key_never_leaves_the_chosen_queue(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "ROUTES": {"videos.*": {"queue": "videos", "routing_key": "media.video",
                                                                    "priority": 2}}}
    # explicit queue: the settings route's key would send it back to videos
    assert routing.resolve("videos.x", call={"queue": "images"}, task={}) == routing.Route("images", None, None, 2)
    row("videos.*", "thumbs")
    assert routing.resolve("videos.x", call={}, task={}).routing_key is None
    # a key given alongside (or above) the deciding queue is kept
    assert routing.resolve("videos.x", call={"routing_key": "k"}, task={"queue": "own"}).routing_key == "k"


def test_redis_priority_limit_is_the_lower_of_queue_and_transport():
    from kombu import Exchange
    from kombu import Queue as KombuQueue

    from django_tasks_q.broker.publisher import check_priority
    from django_tasks_q.exceptions import InvalidTaskOptions

    queue = KombuQueue("q", Exchange("q"), "q", queue_arguments={"x-max-priority": 10})
    check_priority(9, queue, "redis://h/0")
    with pytest.raises(InvalidTaskOptions, match="above 9"):
        check_priority(10, queue, "redis://h/0")
    check_priority(10, queue, "amqp://h//")
