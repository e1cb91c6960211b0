"""The solo pool: run each task inline in the worker's main thread."""

from __future__ import annotations

import time

from ..executor import Outcome, execute
from .base import Job, Pool


class SoloPool(Pool):
    name = "solo"

    def __init__(self, concurrency: int, hostname: str, **options):
        super().__init__(1, hostname)
        self._done: list[tuple[Job, Outcome]] = []

    def free_slots(self) -> int:
        return 0 if self._done else 1

    def in_flight(self) -> int:
        return len(self._done)

    def apply(self, job: Job) -> None:
        job.started_at = time.monotonic()
        self._done.append((job, execute(job.message, job.delivery_info, self.hostname)))

    def poll(self, timeout: float = 0) -> list[tuple[Job, Outcome]]:
        done, self._done = self._done, []
        return done
