"""The solo pool: run each task inline in the worker's main thread.

Because the task runs in the main thread, its soft time limit and a
``terminate()`` arrive by SIGALRM and interrupt even a blocking call
(worker/timelimits.py). A hard ``time_limit`` cannot be enforced without a
child process to kill: it is logged once per task name and otherwise ignored.
"""

from __future__ import annotations

import signal
import threading
import time

from .. import timelimits
from ..executor import Outcome, execute
from .base import Job, Pool


class SoloPool(Pool):
    name = "solo"
    #: a prefork child runs this pool, and its parent kills it at the hard limit (worker/child.py)
    enforces_hard_limit = False

    def __init__(self, concurrency: int, hostname: str, **options):
        super().__init__(1, hostname)
        self._done: list[tuple[Job, Outcome]] = []
        self._lock = threading.Lock()
        self._current: str | None = None  # id of the task running now
        #: when the last inline task ended: the main loop was alive then, though it has not iterated yet
        self.inline_ended_at = 0.0

    def free_slots(self) -> int:
        return 0 if self._done else 1

    def in_flight(self) -> int:
        return len(self._done)

    def apply(self, job: Job) -> None:
        job.started_at = time.monotonic()
        task_id = job.message.id
        if not self.enforces_hard_limit:
            timelimits.warn_hard_limit_unenforced(self.name, job.message.task, job.message.time_limit)
        with self._lock:
            self._current = task_id
        try:
            outcome = execute(job.message, job.delivery_info, self.hostname)
        finally:
            with self._lock:
                self._current = None
                self.inline_ended_at = time.monotonic()
            timelimits.discard(task_id)
        self._done.append((job, outcome))

    def grow(self, n: int) -> None:
        raise ValueError("the solo pool runs one task at a time in the worker's main thread: it cannot grow or "
                         "shrink; start the worker with -P prefork or -P threads to resize it at run time")

    shrink = grow

    def poll(self, timeout: float = 0) -> list[tuple[Job, Outcome]]:
        done, self._done = self._done, []
        return done

    def terminate(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        with self._lock:
            if self._current != task_id:
                return False
            return timelimits.terminate(task_id, signum)

    @property
    def inline_task(self) -> str | None:
        """The id of the task running in the main thread now; the watchdog reads it (a busy loop is no stall)."""
        return self._current
