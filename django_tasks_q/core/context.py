"""``self.request``: what a running task knows about its own invocation."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Request:
    """Mirrors Celery's ``Task.request`` attribute names."""

    id: str | None = None
    task: str | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    hostname: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    callbacks: list | None = None
    errbacks: list | None = None
    chain: list | None = None
    chord: dict | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    origin: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False
    ignore_result: bool = False
    #: where ``update_state`` writes: the eager run's in-memory backend, else the configured one
    backend: Any = field(default=None, repr=False, compare=False)

    @property
    def group(self) -> str | None:  # Celery's spelling
        return self.group_id


#: the requests of the tasks running here, innermost last: a context variable, so each thread -- and each
#: asyncio task, which gets a copy of its creator's context -- sees only its own
_requests: ContextVar[tuple[Request, ...]] = ContextVar("tasks_q_requests", default=())


def push(request: Request) -> None:
    _requests.set((*_requests.get(), request))


def pop() -> None:
    _requests.set(_requests.get()[:-1])


def current() -> Request:
    """The request of the task running in this thread or asyncio task (an empty one outside tasks)."""
    items = _requests.get()
    return items[-1] if items else Request()
