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
    assert route.routing_key == "media.compress"  # not set on the task: the next source fills it
    assert route.priority == 3


def test_call_option_beats_task_option_and_settings():
    route = resolve("videos.tasks.compress",
                    call={"queue": "call-q", "priority": 9, "routing_key": None, "exchange": None},
                    task={"queue": "task-q", "priority": 1})
    assert route == Route(queue="call-q", routing_key="media.compress", priority=9)


def test_priority_zero_is_a_value_not_a_gap():
    assert resolve("videos.tasks.compress", call={"priority": 0}, task={}).priority == 0


def test_no_routes_setting():
    with override_settings(TASKS_Q={}):
        assert resolve("videos.tasks.compress", call={}, task={}) == Route(queue="default")
        assert resolve("x", call={}, task={"queue": "q"}).queue == "q"
