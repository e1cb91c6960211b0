"""Where a task goes: queue, routing key and priority for one call.

Resolution order (DESIGN §9): explicit call option > task option > settings
``ROUTES`` (exact name or glob such as ``videos.*``) > ``DEFAULT_QUEUE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..conf import settings


@dataclass(frozen=True)
class Route:
    queue: str
    routing_key: str | None = None
    exchange: str | None = None
    priority: int | None = None


def _settings_route(task_name: str) -> dict | None:
    routes = settings.ROUTES or {}
    if task_name in routes:
        return routes[task_name]
    for pattern, route in routes.items():
        if fnmatchcase(task_name, pattern):
            return route
    return None


def resolve(task_name: str, *, call: dict, task: dict) -> Route:
    """Pick the route for one call; ``call`` and ``task`` hold queue/routing_key/priority/exchange."""
    configured = _settings_route(task_name) or {}
    if isinstance(configured, str):
        configured = {"queue": configured}

    def pick(key: str):
        for source in (call, task, configured):
            if source.get(key) is not None:
                return source[key]
        return None

    return Route(
        queue=pick("queue") or settings.DEFAULT_QUEUE,
        routing_key=pick("routing_key"),
        exchange=pick("exchange"),
        priority=pick("priority"),
    )
