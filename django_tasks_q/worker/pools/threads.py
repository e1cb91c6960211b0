"""The threads pool: N threads run tasks; the main thread acks what they finish.

A soft time limit or ``terminate()`` reaches a task thread through
``PyThreadState_SetAsyncExc``: it is raised at the thread's next bytecode,
so a thread blocked in one long C call sees it when that call returns
(worker/timelimits.py). A hard ``time_limit`` cannot be enforced on a thread:
it is logged once per task name and otherwise ignored.

``grow``/``shrink`` (the ``pool_grow``/``pool_shrink`` control commands)
start threads, or queue one stop marker per thread to retire: jobs are only
queued for free slots, so idle threads take the markers first.
"""

from __future__ import annotations

import itertools
import queue
import signal
import threading
import time
from collections import Counter

from django.db import connections

from .. import timelimits
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
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()  # ids of tasks handed to the threads and not yet finished
        self._numbers = itertools.count(1)

    def start(self) -> None:
        self._add_threads(self.concurrency)

    def _add_threads(self, n: int) -> None:
        self._threads = [thread for thread in self._threads if thread.is_alive()]  # forget retired ones
        for _ in range(n):
            thread = threading.Thread(target=self._serve, name=f"TaskThread-{next(self._numbers)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def grow(self, n: int) -> None:
        self._add_threads(n)
        self.concurrency += n

    def shrink(self, n: int) -> None:
        """Fewer slots now; ``n`` threads exit as they become idle (each takes one ``None`` from the queue)."""
        if n >= self.concurrency:
            raise ValueError(f"cannot shrink the threads pool by {n}: it has {self.concurrency} thread(s) "
                             f"and keeps at least one")
        self.concurrency -= n
        for _ in range(n):  # jobs are only queued for free slots, so an idle thread takes these first
            self._jobs.put(None)

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
        timelimits.warn_hard_limit_unenforced(self.name, job.message.task, job.message.time_limit)
        self._running += 1
        with self._lock:
            self._held[job.message.id] += 1
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
        if finished:
            with self._lock:
                for job, _outcome in finished:
                    self._held[job.message.id] -= 1
                    if self._held[job.message.id] <= 0:
                        del self._held[job.message.id]
                        timelimits.discard(job.message.id)
        return finished

    def terminate(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        with self._lock:
            if not self._held.get(task_id):
                return False
            return timelimits.terminate(task_id, signum)

    def stop(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
