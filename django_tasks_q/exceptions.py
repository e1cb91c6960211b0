"""Every exception django-tasks-q raises on purpose, in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TasksQError(Exception):
    """Base class of django-tasks-q's own errors."""


class ImproperlyConfigured(TasksQError):
    """A setting or a task declaration is wrong; the message names it."""


class InvalidTaskOptions(ImproperlyConfigured, TypeError):
    """``@task(...)`` or ``apply_async(...)`` was given an option it does not know."""


class NotRegistered(TasksQError, KeyError):
    """No task with this name is registered in this process."""

    def __str__(self) -> str:  # KeyError would show the repr of the args
        return str(self.args[0]) if self.args else "task not registered"


class EncodeError(TasksQError, TypeError):
    """Arguments could not be serialised; nothing was sent."""


class InvalidMessage(TasksQError, ValueError):
    """A broker message is not a task message we can run (bad body, type, signature)."""


class InvalidSignature(InvalidMessage):
    """A message is unsigned or its signature does not match while SIGNING_KEY is set."""


class BrokerUnavailable(TasksQError, ConnectionError):
    """The broker could not be reached after the bounded publish retries."""


class TimeoutError(TasksQError):  # noqa: A001 - the name users know from Celery
    """``AsyncResult.get()`` waited ``timeout`` seconds without a result."""


class TaskError(TasksQError):
    """A task failed with an exception whose type cannot be imported here."""


class Retry(TasksQError):
    """Raised by ``self.retry()``: the executor re-sends the task and records RETRY."""

    def __init__(self, message: str = "", exc: BaseException | None = None, when: float | None = None,
                 retry_args: tuple | list | None = None, retry_kwargs: dict | None = None):
        super().__init__(message or (f"Retry in {when}s" if when is not None else "Retry"))
        self.exc = exc
        self.when = when
        #: new arguments for the next attempt (``self.retry(args=..., kwargs=...)``), None to keep them
        self.retry_args = retry_args
        self.retry_kwargs = retry_kwargs
        #: set by ``Task.retry()``: sends the next attempt; the executor calls it after recording RETRY
        self.resend: Callable[[], Any] | None = None


class MaxRetriesExceededError(TasksQError):
    """``self.retry()`` was called after ``max_retries`` attempts."""


class Reject(TasksQError):
    """Raised by a task to reject its message (requeue or drop)."""

    def __init__(self, reason: str = "", requeue: bool = False):
        super().__init__(reason)
        self.requeue = requeue


class TaskRevokedError(TasksQError):
    """The task was revoked (or expired) before it ran."""


class SoftTimeLimitExceeded(TasksQError):
    """Raised inside a task when its ``soft_time_limit`` passes."""


class TimeLimitExceeded(TasksQError):
    """The task ran past its hard ``time_limit`` and its process was killed."""


class ChordError(TasksQError):
    """A member of a chord's header failed, so the chord's body did not run."""
