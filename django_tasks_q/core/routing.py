"""Where a task goes: queue, routing key, exchange and priority for one call.

Resolution order (docs/routing.md), field by field:

1. explicit ``apply_async(queue=..., routing_key=..., priority=...)``
2. the task's own options (``@task(queue="videos")``)
3. the first enabled ``TaskRoute`` row (lowest ``order``) whose pattern
   matches the name (exact, or a glob such as ``videos.*``)
4. ``TASKS_Q["ROUTES"]`` (exact name first, then globs in order)
5. ``TASKS_Q["DEFAULT_QUEUE"]``

Route rows and queue rows are read into a ``RouteTable`` that is reloaded
at most once per ``REFRESH`` seconds: an admin edit reaches every running
process within that time, and in the steady state a ``delay()`` costs no
query (two small reads per process per second at most, only while tasks
are being sent).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from ..conf import settings

logger = logging.getLogger(__name__)
FIELDS = ("queue", "routing_key", "exchange", "priority")
REFRESH = 1.0


@dataclass(frozen=True)
class Route:
    queue: str
    routing_key: str | None = None
    exchange: str | None = None
    priority: int | None = None


@dataclass(frozen=True)
class Step:
    """One rule as ``explain()`` tried it (for the admin's preview)."""

    rule: str
    matched: bool
    decided: bool
    route: Route | None


def matches(pattern: str, task_name: str) -> bool:
    return pattern == task_name or fnmatchcase(task_name, pattern)


class RouteTable:
    """Enabled ``TaskRoute`` rows and ``Queue`` rows, cached for ``REFRESH`` seconds."""

    def __init__(self) -> None:
        self.routes: list[tuple[int, str, dict[str, Any], int]] = []  # (id, pattern, fields, order)
        self.queues: dict[str, dict[str, Any]] = {}  # name -> QUEUES-style spec
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def fresh(self) -> "RouteTable":
        if time.monotonic() - self._loaded_at > REFRESH:
            with self._lock:
                if time.monotonic() - self._loaded_at > REFRESH:
                    self.reload()
        return self

    def reload(self) -> None:
        from ..models import Queue, TaskRoute

        try:
            rows = TaskRoute.objects.filter(enabled=True).select_related("queue").order_by("order", "id")
            self.routes = [(row.id, row.pattern, {"queue": row.queue.name, "routing_key": row.routing_key or None,
                                                  "priority": row.priority}, row.order) for row in rows]
            self.queues = {row.name: row.as_spec() for row in Queue.objects.all()}
        except (DatabaseError, ImproperlyConfigured) as exc:  # not migrated, or no database: settings route
            logger.warning("routing rows unavailable (%s); using TASKS_Q settings only", exc)
            self.routes, self.queues = [], {}
        self._loaded_at = time.monotonic()

    def row_for(self, task_name: str) -> tuple[str, dict[str, Any]] | None:
        for route_id, pattern, fields, order in self.routes:
            if matches(pattern, task_name):
                return f"TaskRoute #{route_id} {pattern} (order {order})", fields
        return None


_table = RouteTable()


def route_table() -> RouteTable:
    return _table.fresh()


def _settings_route(task_name: str) -> tuple[str, dict[str, Any]] | None:
    routes = settings.ROUTES or {}
    for pattern in sorted(routes, key=lambda p: p != task_name):  # the exact name first
        if matches(pattern, task_name):
            route = routes[pattern]
            return f"TASKS_Q['ROUTES'][{pattern!r}]", {"queue": route} if isinstance(route, str) else dict(route)
    return None


def _sources(task_name: str, call: dict, task: dict) -> list[tuple[str, dict[str, Any] | None]]:
    """Every rule in precedence order, with the fields it offers (None: it does not match)."""
    return [
        ("call option", call if any(call.get(f) is not None for f in FIELDS) else None),
        ("task option", task if any(task.get(f) is not None for f in FIELDS) else None),
        *([route_table().row_for(task_name) or ("TaskRoute rows", None)]),
        *([_settings_route(task_name) or ("TASKS_Q['ROUTES']", None)]),
        ("DEFAULT_QUEUE", {"queue": settings.DEFAULT_QUEUE}),
    ]


def _merge(sources: list[tuple[str, dict[str, Any] | None]]) -> tuple[Route, str]:
    """Fields from the strongest rules down to the one that names a queue (which decides).

    Below the deciding rule only ``priority`` may still be filled in: a weaker
    rule's routing key or exchange would send the message away from the queue
    that was chosen (Celery likewise drops a route's key when ``queue=`` is given).
    """
    picked: dict[str, Any] = {}
    for index, (label, fields) in enumerate(sources):
        for name in FIELDS:
            if fields and picked.get(name) is None and fields.get(name) is not None:
                picked[name] = fields[name]
        if picked.get("queue") is not None:
            for _weaker_label, weaker in sources[index + 1:]:
                if weaker and picked.get("priority") is None and weaker.get("priority") is not None:
                    picked["priority"] = weaker["priority"]
            chosen: dict[str, Any] = {name: picked.get(name) for name in FIELDS}
            return Route(**chosen), label
    raise AssertionError("DEFAULT_QUEUE always names a queue")


class _Resolved:
    """Routes already picked for calls that name no route of their own, while the rules stay the same.

    Most calls are ``delay()``: the route depends only on the task, the
    ``TaskRoute`` rows (reloaded every ``REFRESH`` seconds) and the settings
    (a new dict on every change), so it is picked once per task until either
    changes -- not matched against every pattern again on every send.
    """

    def __init__(self) -> None:
        self.rules: tuple[Any, float] | None = None
        self.routes: dict[tuple, Route] = {}

    def get(self, task_name: str, task: dict) -> Route:
        table = route_table()
        rules = (settings.as_dict(), table._loaded_at)
        if self.rules is None or self.rules[0] is not rules[0] or self.rules[1] != rules[1]:
            self.rules, self.routes = rules, {}
        key = (task_name, *(task.get(name) for name in FIELDS))
        route = self.routes.get(key)
        if route is None:
            route = self.routes[key] = _merge(_sources(task_name, {}, task))[0]
        return route


_resolved = _Resolved()


def resolve(task_name: str, *, call: dict, task: dict) -> Route:
    """Pick the route for one call; ``call`` and ``task`` hold queue/routing_key/priority/exchange."""
    if all(call.get(name) is None for name in FIELDS):
        return _resolved.get(task_name, task)
    route, _ = _merge(_sources(task_name, call, task))
    return route


def explain(task_name: str, *, call: dict | None = None, task: dict | None = None) -> list[Step]:
    """Every rule tried for ``task_name``, which matched, and which decided the queue."""
    sources = _sources(task_name, call or {}, task or {})
    _, decided_by = _merge(sources)
    return [Step(rule=label, matched=bool(fields), decided=label == decided_by,
                 route=Route(**cast("dict[str, Any]", {f: fields.get(f) for f in FIELDS}))
                 if fields and fields.get("queue") else
                 (Route(queue="", **cast("dict[str, Any]", {f: fields.get(f) for f in FIELDS if f != "queue"}))
                  if fields else None))
            for label, fields in sources]
