"""The threads pool: N threads run tasks; the main thread acks what they finish."""

from __future__ import annotations

import queue
import threading
import time

from django.db import connections

from ..executor import Outcome, execute
from .base import Job, Pool


class ThreadPool(Pool):
    name = "threads"

    def __init__(self, concurrency: int, hostname: str, **options):
        super().__init__(concurrency, hostname)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[Job, Outcome]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0

    def start(self) -> None:
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._serve, name=f"TaskThread-{number + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                self._done.put((job, execute(job.message, job.delivery_info, self.hostname)))
        finally:
            connections.close_all()  # this thread's own connections

    def free_slots(self) -> int:
        return self.concurrency - self._running

    def in_flight(self) -> int:
        return self._running

    def apply(self, job: Job) -> None:
        job.started_at = time.monotonic()
        self._running += 1
        self._jobs.put(job)

    def poll(self, timeout: float = 0) -> list[tuple[Job, Outcome]]:
        finished = []
        try:
            finished.append(self._done.get(timeout=timeout) if timeout > 0 else self._done.get_nowait())
            while True:
                finished.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self._running -= len(finished)
        return finished

    def stop(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
