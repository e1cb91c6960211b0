"""The prefork pool: child processes run tasks, one at a time each.

Children are forked from the worker after Django is set up, so they share
its imported code. Each child talks to the parent over its own pipe: the
parent sends ``(key, message, delivery_info)``, the child answers
``(key, outcome)``. A child that dies mid-task is replaced and its task
recorded as FAILURE (WorkerLostError) -- an acks_late message is then
rejected back to the queue instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from django.db import connections

from ...core.states import TaskState
from ..executor import Outcome, execute
from .base import Job, Pool

logger = logging.getLogger(__name__)
_fork = multiprocessing.get_context("fork")


class WorkerLostError(Exception):
    """The child process running a task exited before finishing it."""


def _child_main(pipe: Connection, hostname: str, max_tasks: int | None, max_memory_kb: int | None) -> None:
    # Terminal Ctrl-C and a SIGTERM to the process group are the parent's to handle:
    # children finish their task and exit when the parent tells them to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    done = 0
    while True:
        try:
            item = pipe.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        key, message, delivery_info = item
        outcome = execute(message, delivery_info, hostname)
        done += 1
        retiring = bool(max_tasks and done >= max_tasks)
        if max_memory_kb and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > max_memory_kb:
            logger.warning("child %s passed --max-memory-per-child (%s KB); replacing it", os.getpid(), max_memory_kb)
            retiring = True
        pipe.send((key, outcome.slim(), retiring))
        if retiring:  # told the parent first, so it never hands us another job
            return


class _Child:
    def __init__(self, process: Any, pipe: Connection):
        self.process = process
        self.pipe = pipe
        self.job: Job | None = None


class PreforkPool(Pool):
    name = "prefork"

    def __init__(self, concurrency: int, hostname: str, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None, **options):
        super().__init__(concurrency, hostname)
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._children: list[_Child] = []
        self._keys = 0

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())

    def _spawn(self) -> _Child:
        connections.close_all()  # never share a database socket with a child
        parent_end, child_end = _fork.Pipe()
        process = _fork.Process(target=_child_main, name="TaskChild",
                                args=(child_end, self.hostname, self.max_tasks_per_child, self.max_memory_per_child),
                                daemon=True)
        process.start()
        child_end.close()
        return _Child(process, parent_end)

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children]

    def free_slots(self) -> int:
        return sum(1 for c in self._children if c.job is None)

    def in_flight(self) -> int:
        return sum(1 for c in self._children if c.job is not None)

    def apply(self, job: Job) -> None:
        child = next(c for c in self._children if c.job is None)
        job.started_at = time.monotonic()
        child.job = job
        try:
            child.pipe.send((id(job), job.message, job.delivery_info))
        except (OSError, ValueError):  # the child died between tasks: the poll will replace it
            pass

    def poll(self, timeout: float = 0) -> list[tuple[Job, Outcome]]:
        busy = [c for c in self._children if c.job is not None]
        finished: list[tuple[Job, Outcome]] = []
        ready = wait([c.pipe for c in busy], timeout) if busy else []
        for child in busy:
            if child.pipe in ready:
                try:
                    _key, outcome, retiring = child.pipe.recv()
                except (EOFError, OSError):
                    finished.append((child.job, self._lost(child)))
                    continue
                finished.append((child.job, outcome))
                child.job = None
                if retiring:
                    child.process.join()
        self._replace_dead()
        return finished

    def _lost(self, child: _Child) -> Outcome:
        child.process.join(timeout=1)
        job = child.job
        child.job = None
        exitcode = child.process.exitcode
        logger.error("child %s running %s[%s] exited (exitcode %s)", child.process.pid, job.message.task,
                     job.message.id, exitcode)
        if not job.acks_late:
            from ..executor import make_request
            from ...results.backend import describe_exception, get_backend

            error = WorkerLostError(f"worker child exited with code {exitcode} while running {job.message.task}")
            request = make_request(job.message, job.delivery_info, self.hostname)
            try:
                get_backend().mark(job.message.id, TaskState.FAILURE, result=describe_exception(error),
                                   request=request, task_name=job.message.task)
            except Exception:
                logger.exception("could not record the loss of %s", job.message.id)
            return Outcome(state=TaskState.FAILURE)
        return Outcome(state=TaskState.RECEIVED, requeue=True)

    def _replace_dead(self) -> None:
        for index, child in enumerate(self._children):
            if child.job is None and not child.process.is_alive():
                child.pipe.close()
                self._children[index] = self._spawn()

    def stop(self, wait: bool = True) -> None:
        for child in self._children:
            if wait:
                try:
                    child.pipe.send(None)
                except OSError:
                    pass
            else:
                child.process.kill()
        deadline = time.monotonic() + (3600 if wait else 5)
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            child.pipe.close()
        self._children = []

    def info(self) -> dict[str, Any]:
        return {**super().info(), "processes": self.pids()}
