"""``self.request``: what a running task knows about its own invocation.

The mapping between a message and its request is written here once, in
both directions: :meth:`Request.from_message` (what a worker or eager run
knows of a :class:`~django_tasks_q.core.protocol.TaskMessage`) and
:meth:`Request.resend_options` (the call options of the next attempt, for
``Task.retry``). The calling side, call options to a message, is
:meth:`~django_tasks_q.core.options.CallOptions.to_message`.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol import TaskMessage


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

    @classmethod
    def from_message(cls, message: TaskMessage, delivery_info: dict[str, Any], hostname: str | None, *,
                     eager: bool = False, backend: Any = None) -> Request:
        """The request of ``message``, delivered with ``delivery_info`` to ``hostname`` (``None`` when eager)."""
        return cls(
            id=message.id, task=message.task, args=tuple(message.args), kwargs=dict(message.kwargs),
            retries=message.retries, eta=message.eta, expires=message.expires, delivery_info=delivery_info,
            hostname=hostname, parent_id=message.parent_id, root_id=message.root_id or message.id,
            group_id=message.group_id, group_index=message.group_index, callbacks=message.callbacks,
            errbacks=message.errbacks, chain=message.chain, chord=message.chord, time_limit=message.time_limit,
            soft_time_limit=message.soft_time_limit, origin=message.origin, headers=message.extra_headers,
            is_eager=eager, ignore_result=message.ignore_result, backend=backend,
        )

    def resend_options(self, countdown: float | None, eta: datetime | None) -> dict[str, Any]:
        """``apply_async()`` options of this task's next attempt (``Task.retry``): the same id, ``retries + 1``,
        the same queue, priority, time limits, links and expiry, due after ``countdown`` or at ``eta``.
        Options without a value are left out."""
        options = {"task_id": self.id, "retries": self.retries + 1,
                   "countdown": countdown if eta is None else None, "eta": eta, "expires": self.expires,
                   "parent_id": self.parent_id, "root_id": self.root_id, "group_id": self.group_id,
                   "group_index": self.group_index, "queue": self.delivery_info.get("queue"),
                   # 0 is also what a broker reports for "none given": carrying it would be refused by a
                   # RabbitMQ queue declared without max_priority
                   "priority": self.delivery_info.get("priority") or None, "time_limit": self.time_limit,
                   "soft_time_limit": self.soft_time_limit, "ignore_result": self.ignore_result or None,
                   "link": self.callbacks or None, "link_error": self.errbacks or None,
                   "chain": self.chain or None, "chord": self.chord or None}
        return {name: value for name, value in options.items() if value is not None}


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
