"""Task options (``@task(...)``) and call options (``apply_async(...)``).

Both are frozen dataclasses validated on construction, so a typo such as
``@task(max_retry=3)`` fails at import time with a hint instead of being
ignored, and per-call overrides are ``dataclasses.replace()`` on a value.
:meth:`CallOptions.to_message` is the one mapping from a call's options
(and the task's declared ones) to the message it sends; the way back, from a
running request to the options of its next attempt, is
:meth:`~django_tasks_q.core.context.Request.resend_options`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ..exceptions import InvalidTaskOptions
from .protocol import TaskMessage, absolute_time, new_id

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")


def parse_rate_limit(value: str | None) -> float | None:
    """``"10/s"`` -> 10.0 tasks per second; ``"100/m"`` -> 1.67; ``None`` -> no limit."""
    if value is None:
        return None
    match = _RATE.match(str(value))
    if not match:
        raise InvalidTaskOptions(f"rate_limit {value!r} is not of the form '10/s', '100/m' or '1000/h'")
    amount, unit = float(match.group(1)), match.group(2)
    return amount / {"s": 1, "m": 60, "h": 3600}[unit]


def _reject_unknown(kind: str, given: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(given) - known)
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise InvalidTaskOptions(f"{where}: unknown {kind} {', '.join(hints)}; known: {', '.join(sorted(known))}")


def _check_number(name: str, value: Any, *, allow_none: bool = True, minimum: float = 0) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise InvalidTaskOptions(f"{name} must be a number >= {minimum}, got {value!r}")


def _check_priority(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255):
        raise InvalidTaskOptions(f"priority must be an integer from 0 to 255, got {value!r}")


@dataclass(frozen=True)
class TaskOptions:
    """What ``@task(...)`` accepts (docs/tasks.md), with Celery's defaults."""

    name: str | None = None
    bind: bool = False
    queue: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    reject_on_worker_lost: bool | None = None
    ignore_result: bool = False
    rate_limit: str | None = None
    expires: float | datetime | None = None
    serializer: str | None = None

    @classmethod
    def from_kwargs(cls, where: str, **given: Any) -> "TaskOptions":
        _reject_unknown("task option", given, {f.name for f in fields(cls)}, where)
        return cls(**given)

    def __post_init__(self) -> None:
        for name in ("max_retries",):
            _check_number(name, getattr(self, name))
        for name in ("default_retry_delay", "retry_backoff_max"):
            _check_number(name, getattr(self, name), allow_none=False)
        for name in ("time_limit", "soft_time_limit"):
            _check_number(name, getattr(self, name))
        _check_priority(self.priority)
        for name in ("autoretry_for", "dont_autoretry_for"):
            value = getattr(self, name)
            if isinstance(value, type):
                value = (value,)
                object.__setattr__(self, name, value)
            if not all(isinstance(v, type) and issubclass(v, BaseException) for v in value):
                raise InvalidTaskOptions(f"{name} must be a tuple of exception classes, got {value!r}")
        parse_rate_limit(self.rate_limit)
        if self.expires is not None and (isinstance(self.expires, bool)
                                         or not isinstance(self.expires, (int, float, datetime))):
            raise InvalidTaskOptions(f"expires must be seconds or a datetime, got {self.expires!r}")


@dataclass(frozen=True)
class CallOptions:
    """What ``apply_async(...)`` / ``send_task(...)`` accept (docs/calling.md)."""

    countdown: float | None = None
    eta: datetime | None = None
    expires: float | datetime | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    serializer: str | None = None
    task_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    link: Any = None
    link_error: Any = None
    ignore_result: bool | None = None
    retries: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    chain: list | None = None
    chord: dict | None = None

    @classmethod
    def from_kwargs(cls, where: str, **given: Any) -> "CallOptions":
        if not given:  # delay(): no options; the instance is frozen and its headers are only read
            return NO_CALL_OPTIONS
        _reject_unknown("call option", given, _CALL_OPTION_NAMES, where)
        return cls(**given)

    def __post_init__(self) -> None:
        _check_number("countdown", self.countdown, minimum=float("-inf"))
        _check_number("time_limit", self.time_limit)
        _check_number("soft_time_limit", self.soft_time_limit)
        _check_priority(self.priority)
        if self.countdown is not None and self.eta is not None:
            raise InvalidTaskOptions("give either countdown or eta, not both")
        if self.eta is not None and not isinstance(self.eta, datetime):
            raise InvalidTaskOptions(f"eta must be a datetime, got {self.eta!r}")
        if self.expires is not None and not isinstance(self.expires, (int, float, datetime)):
            raise InvalidTaskOptions(f"expires must be seconds or a datetime, got {self.expires!r}")
        if not isinstance(self.headers, dict):
            raise InvalidTaskOptions(f"headers must be a dict, got {self.headers!r}")

    def to_message(self, name: str, args: Any, kwargs: Any, declared: TaskOptions | None,
                   now: datetime) -> TaskMessage:
        """The message of this call of task ``name``: a new id unless the call names one; a value the call
        leaves out taken from the task's ``declared`` options; ``countdown`` and ``expires`` from ``now``."""
        return TaskMessage(
            id=self.task_id or new_id(),
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            eta=self.eta if self.eta is not None else absolute_time(self.countdown, now),
            expires=absolute_time(call_or_declared(self.expires, declared, "expires"), now),
            retries=self.retries,
            time_limit=call_or_declared(self.time_limit, declared, "time_limit"),
            soft_time_limit=call_or_declared(self.soft_time_limit, declared, "soft_time_limit"),
            root_id=self.root_id,
            parent_id=self.parent_id,
            group_id=self.group_id,
            group_index=self.group_index,
            ignore_result=call_or_declared(self.ignore_result, declared, "ignore_result", False),
            callbacks=signature_dicts(self.link),
            errbacks=signature_dicts(self.link_error),
            chain=self.chain,
            chord=self.chord,
            extra_headers=self.headers,
        )


def signature_dicts(value: Any) -> list | None:
    """``link=sig`` or ``link=[sig, ...]`` as protocol embed dicts."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    return [dict(item) for item in items]


def call_or_declared(call_value: Any, declared: TaskOptions | None, name: str, default: Any = None) -> Any:
    """The call's value, else the task's declared option ``name``, else ``default``."""
    if call_value is not None:
        return call_value
    if declared is not None and getattr(declared, name) is not None:
        return getattr(declared, name)
    return default


_CALL_OPTION_NAMES = {f.name for f in fields(CallOptions)}
#: ``apply_async()`` without options (``delay()``): one shared, frozen instance.
NO_CALL_OPTIONS = CallOptions()
