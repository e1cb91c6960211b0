"""The pool interface every worker pool implements.

A pool runs jobs and reports them finished. The worker's main thread owns
the broker connection, so pools never ack: ``poll()`` hands finished jobs
back to the main thread, which acks them there.

Every method is called from the worker's main thread, except ``terminate()``,
which any thread may call (control commands are handled in the background).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

from ..executor import Outcome


@dataclass(eq=False)
class Job:
    """A received task on its way through the worker."""

    message: Any  # core.protocol.TaskMessage
    delivery_info: dict
    acks_late: bool
    kombu_message: Any = field(default=None, repr=False)
    started_at: float | None = None
    #: (hard, soft) limits as the message carried them, before a ``time_limit`` command replaced them
    sent_limits: tuple | None = field(default=None, repr=False)


class Pool:
    name = "base"
    #: a child process is replaced after this many tasks (prefork's ``--max-tasks-per-child``); None: never
    max_tasks_per_child: int | None = None
    #: when the last task run in the main thread ended (monotonic seconds); the watchdog reads it (solo)
    inline_ended_at = 0.0

    def __init__(self, concurrency: int, hostname: str, **options: Any):
        self.concurrency = concurrency
        self.hostname = hostname

    @property
    def inline_task(self) -> str | None:
        """The id of a task running in the worker's main thread now (solo), else None: a busy main loop
        is not stuck while it runs one."""
        return None

    def pids(self) -> list[int]:
        """The processes that run tasks (``inspect stats``)."""
        return [os.getpid()]

    def pid_of(self, job: Job) -> int:
        """The process running ``job`` (``inspect active``)."""
        return os.getpid()

    def start(self) -> None:
        """Create threads or processes."""

    def free_slots(self) -> int:
        raise NotImplementedError

    def in_flight(self) -> int:
        raise NotImplementedError

    def apply(self, job: Job) -> None:
        """Start running ``job`` (the caller checked there is a free slot)."""
        raise NotImplementedError

    def poll(self, timeout: float = 0) -> list[tuple[Job, Outcome]]:
        """Finished jobs, waiting up to ``timeout`` seconds for the first one."""
        raise NotImplementedError

    def terminate(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        """Stop the running task ``task_id``; True when it was running here and was told to stop.

        Safe to call from any thread. The task is recorded REVOKED with
        ``TaskRevokedError("terminated")`` and its message acked (even with
        acks_late: it was stopped on purpose). Prefork kills the child;
        solo and threads raise ``TaskRevokedError`` inside the task.
        """
        raise NotImplementedError

    def grow(self, n: int) -> None:
        """Add ``n`` slots (main thread; the ``pool_grow`` control command). ValueError when it cannot."""
        raise ValueError(f"the {self.name} pool cannot grow")

    def shrink(self, n: int) -> None:
        """Remove ``n`` slots, idle ones now, busy ones when their task ends (``pool_shrink``).

        ValueError when it cannot (a pool keeps at least one slot).
        """
        raise ValueError(f"the {self.name} pool cannot shrink")

    def stop(self, wait: bool = True) -> None:
        """Finish running jobs (``wait``) or abandon them, then release resources."""

    def info(self) -> dict[str, Any]:
        return {"pool": self.name, "concurrency": self.concurrency}
