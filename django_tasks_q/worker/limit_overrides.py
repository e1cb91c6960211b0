"""Time limits changed at run time by the ``time_limit`` control command, per task name.

A task's declared ``time_limit`` / ``soft_time_limit`` travel in each message
(the ``timelimit`` header), and the pools enforce what the message says. So
the override is applied to the message of each job as the worker starts it
(``Worker._tick``): from then on, tasks of that name started on this worker
run with the new limits -- the hard one enforced by the prefork parent, the
soft one in the task's process -- until the worker restarts. Tasks already
running keep the limits they started with, as in Celery.

As in Celery, limits given for one call win: a message whose limits differ
from the task's declared ones (``apply_async(soft_time_limit=...)``) keeps
them. A message with no limits at all (a Celery client sends none unless
asked) or with the declared ones gets the override.

The command thread writes the dictionary, the main loop reads it: one
assignment each, no lock needed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from ..core.registry import registry
from .handoff import Refused
from .pools.base import Job

logger = logging.getLogger(__name__)

Limits = tuple[float | None, float | None]  # (hard, soft), as in the message header


def parse_limit(value: Any, which: str) -> float | None:
    """A limit in seconds from a control command: a number or numeric text; ``None``/``0`` is no limit."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise Refused(f"{which} time limit must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise Refused(f"{which} time limit must be a finite number of seconds, not negative; got {value!r}")
    return seconds or None


class LimitOverrides:
    """Task name -> (hard, soft) set by ``time_limit``; applied to jobs as they start."""

    def __init__(self) -> None:
        self._limits: dict[str, Limits] = {}

    def set(self, task_name: str, soft: Any, hard: Any) -> Limits:
        """Record new limits for ``task_name``; :class:`Refused` for an unknown task or a bad number."""
        if task_name not in registry:
            raise Refused("unknown task")
        limits = (parse_limit(hard, "hard"), parse_limit(soft, "soft"))
        self._limits = {**self._limits, task_name: limits}
        return limits

    def get(self, task_name: str) -> Limits | None:
        return self._limits.get(task_name)

    def apply(self, job: Job) -> Job:
        """``job`` with the override for its task, unless its message carries limits of its own."""
        limits = self._limits.get(job.message.task)
        if limits is None:
            return job
        message = job.message
        if job.sent_limits is None:  # first look (a rate-limited job comes by again)
            job.sent_limits = (message.time_limit, message.soft_time_limit)
        sent = job.sent_limits
        task = registry.get(message.task)
        declared = (task.options.time_limit, task.options.soft_time_limit) if task is not None else (None, None)
        if sent not in (declared, (None, None)):
            return job  # limits given at the call win, as in Celery
        if (message.time_limit, message.soft_time_limit) != limits:
            job.message = dataclasses.replace(message, time_limit=limits[0], soft_time_limit=limits[1])
        return job


__all__ = ["LimitOverrides", "parse_limit"]
