"""The prefork pool: child processes run tasks, one at a time each.

Children are forked from the worker after Django is set up, so they share
its imported code. Each child talks to the parent over its own pipe: the
parent sends ``(key, message, delivery_info)``, the child answers
``(key, outcome)``.

When a child stops before answering:

* it died on its own -> FAILURE (``WorkerLostError``); an acks_late message
  is rejected back to the queue instead, for another worker to run;
* it ran past the task's hard ``time_limit`` -> the parent SIGKILLs it,
  records FAILURE (``TimeLimitExceeded``) and acks the message even with
  acks_late: run again, it would only time out again;
* ``terminate(task_id)`` killed it -> REVOKED (``TaskRevokedError("terminated")``),
  message acked.

A stopped child is replaced at once and the worker goes on serving --
except one that ``shrink()`` (the ``pool_shrink`` control command) retired:
idle ones are stopped at once, busy ones once their task ends, and none is
replaced; ``grow()`` forks new children. The soft
limit is the child's own business (a SIGALRM timer, worker/timelimits.py).
Children ignore SIGTERM and SIGINT so that a signal to the whole process
group leaves running tasks to the parent's warm shutdown; that is why
``terminate()`` turns SIGTERM/SIGINT into SIGKILL. Other signals are sent
as given (a child that survives one just finishes its task).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from django.db import connections

from ... import signals
from ...core.registry import registry
from ...core.states import TaskState
from ...exceptions import TaskRevokedError, TimeLimitExceeded
from .. import timelimits
from ..executor import Outcome, execute, record_stopped
from ..logging import configure_logging
from .base import Job, Pool

logger = logging.getLogger(__name__)
_fork = multiprocessing.get_context("fork")
_forkserver = multiprocessing.get_context("forkserver")
_forkserver.set_forkserver_preload(["django_tasks_q.worker.pools.child_boot"])


def _context() -> Any:
    """How to make a child: ``fork`` while the worker has one thread; else through a fork server.

    A forked child is a copy of every lock the worker's other threads held at
    that instant -- the beat or remote-control thread in the middle of an
    SQLite transaction, writing a log line -- with nobody left to release it:
    its first database write then waits on SQLite's copy of a lock for ever.
    So children made once threads run (``--beat``, replacements, ``pool_grow``)
    come from a fork server: a single-threaded process started fresh (not
    forked) that has set up Django once (``child_boot``) and forks them.
    """
    return _fork if threading.active_count() == 1 else _forkserver


class WorkerLostError(Exception):
    """The child process running a task exited before finishing it."""


def _child_main(pipe: Connection, hostname: str, max_tasks: int | None, max_memory_kb: int | None,
                loglevel: str = "INFO", database_names: dict[str, Any] | None = None) -> None:
    # A child of the fork server has only what settings say: give it the worker's log level and the
    # databases the worker really uses (a test run, say, renames them at run time).
    configure_logging(loglevel)
    for alias, name in (database_names or {}).items():
        connections[alias].settings_dict["NAME"] = name
    # Terminal Ctrl-C and a SIGTERM to the process group are the parent's to handle:
    # children finish their task and exit when the parent tells them to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signals.send(signals.worker_process_init, sender=None, pid=os.getpid())
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
        timelimits.discard(message.id)
        done += 1
        retiring = bool(max_tasks and done >= max_tasks)
        if max_memory_kb and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > max_memory_kb:
            logger.warning("child %s passed --max-memory-per-child (%s KB); replacing it", os.getpid(), max_memory_kb)
            retiring = True
        pipe.send((key, outcome.slim(), retiring))
        if retiring:  # told the parent first, so it never hands us another job
            return


def _requeue_lost(job: Job) -> bool:
    """Give an ``acks_late`` task whose child died back to the queue?

    ``reject_on_worker_lost=True``: always; ``False``: never (Celery's
    default: FAILURE with WorkerLostError). Unset: once -- a message that was
    already delivered before fails instead, so a task that kills its child
    every time (a segfault, the OOM killer) cannot loop for ever.
    """
    task = registry.get(job.message.task)
    choice = task.options.reject_on_worker_lost if task is not None else None
    if choice is not None:
        return choice
    return not job.delivery_info.get("redelivered")


class _Child:
    def __init__(self, process: Any, pipe: Connection):
        self.process = process
        self.pipe = pipe
        self.job: Job | None = None
        #: the job this child was killed over, and why: a TimeLimitExceeded or TaskRevokedError
        self.stopped: tuple[Job, BaseException, int] | None = None
        self.doomed = False  # sent SIGKILL: never give it another job
        self.retiring = False  # pool_shrink chose it: stop it once idle, do not replace it


class PreforkPool(Pool):
    name = "prefork"

    def __init__(self, concurrency: int, hostname: str, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None, **options):
        super().__init__(concurrency, hostname)
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._children: list[_Child] = []
        self._keys = 0
        # guards child.job / child.stopped against terminate() from another thread
        self._lock = threading.Lock()

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())

    def _spawn(self) -> _Child:
        connections.close_all()  # never share a database socket with a child
        context = _context()
        parent_end, child_end = context.Pipe()
        loglevel = logging.getLevelName(logging.getLogger("django_tasks_q").getEffectiveLevel())
        database_names = {alias: connections[alias].settings_dict["NAME"] for alias in connections}
        process = context.Process(target=_child_main, name="TaskChild",
                                  args=(child_end, self.hostname, self.max_tasks_per_child, self.max_memory_per_child,
                                        loglevel, database_names), daemon=True)
        process.start()
        child_end.close()
        return _Child(process, parent_end)

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children]

    def pid_of(self, job: Job) -> int:
        for child in self._children:
            if child.job is job:
                return child.process.pid
        return os.getpid()

    def free_slots(self) -> int:
        return sum(1 for c in self._children if c.job is None and not c.doomed and not c.retiring)

    def in_flight(self) -> int:
        return sum(1 for c in self._children if c.job is not None)

    def apply(self, job: Job) -> None:
        with self._lock:
            child = next(c for c in self._children if c.job is None and not c.doomed and not c.retiring)
            job.started_at = time.monotonic()
            child.job = job
        try:
            child.pipe.send((id(job), job.message, job.delivery_info))
        except (OSError, ValueError):  # the child died between tasks: the poll will replace it
            pass

    def poll(self, timeout: float = 0) -> list[tuple[Job, Outcome]]:
        busy = [c for c in self._children if c.job is not None]
        finished: list[tuple[Job, Outcome]] = []
        if busy:
            ready = wait([c.pipe for c in busy], max(0.0, min(timeout, self._until_deadline(busy))))
        else:
            ready = []
        for child in busy:
            job = child.job  # only this thread clears it
            if job is not None and child.pipe in ready:
                try:
                    _key, outcome, retiring = child.pipe.recv()
                except (EOFError, OSError):
                    finished.append((job, self._lost(child)))
                    continue
                with self._lock:
                    finished.append((job, outcome))
                    child.job = None
                    child.stopped = None  # answered before a kill took effect: its outcome stands
                if retiring:
                    child.process.join()
        finished.extend(self._enforce_time_limits())
        self._replace_dead()
        return finished

    # -- hard time limit and terminate ---------------------------------
    @staticmethod
    def _deadline(job: Job) -> float | None:
        limit = job.message.time_limit
        if not limit or job.started_at is None:
            return None
        return job.started_at + limit

    def _until_deadline(self, busy: list[_Child]) -> float:
        deadlines = [d for c in busy if c.job is not None and (d := self._deadline(c.job)) is not None]
        return min(deadlines) - time.monotonic() if deadlines else float("inf")

    def _enforce_time_limits(self) -> list[tuple[Job, Outcome]]:
        """SIGKILL every child whose job has run past its hard ``time_limit``; report those jobs."""
        finished = []
        now = time.monotonic()
        for child in self._children:
            job = child.job
            deadline = None if job is None else self._deadline(job)
            if job is None or deadline is None or now < deadline or child.stopped is not None:
                continue
            if child.pipe.poll():  # it answered just in time: the next poll reads the answer
                continue
            error = TimeLimitExceeded(f"task {job.message.task} [{job.message.id}] ran past its hard time limit "
                                      f"({job.message.time_limit}s); its worker child was killed")
            logger.error("hard time limit (%ss) exceeded for %s[%s]; killing child %s", job.message.time_limit,
                         job.message.task, job.message.id, child.process.pid)
            with self._lock:
                child.stopped = (job, error, signal.SIGKILL)
                child.doomed = True
            self._kill(child, signal.SIGKILL)
            finished.append((job, self._lost(child)))
        return finished

    def terminate(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        # children ignore SIGTERM/SIGINT (see _child_main): stopping the task takes SIGKILL
        sent = signal.SIGKILL if signum in (signal.SIGTERM, signal.SIGINT) else signum
        with self._lock:
            for child in self._children:
                job = child.job
                if job is None or job.message.id != task_id:
                    continue
                if child.stopped is None:
                    child.stopped = (job, TaskRevokedError("terminated"), signum)
                    child.doomed = sent == signal.SIGKILL
                    logger.warning("terminating %s[%s]: signal %s to child %s", job.message.task, task_id,
                                   sent, child.process.pid)
                    self._kill(child, sent)
                return True
        return False

    @staticmethod
    def _kill(child: _Child, signum: int) -> None:
        if child.process.exitcode is not None:  # already reaped: its pid may belong to someone else now
            return
        try:
            os.kill(child.process.pid, signum)
        except ProcessLookupError:  # gone meanwhile: the poll reports it
            pass

    def _lost(self, child: _Child) -> Outcome:
        """The child stopped without answering: decide, record and report its job's outcome."""
        child.process.join(timeout=5 if child.doomed else 1)
        with self._lock:
            job, stopped = child.job, child.stopped
            child.job = None
            child.stopped = None
        assert job is not None, "_lost() is only called for a child that has a job"
        if stopped is not None and stopped[0] is job:
            _job, error, signum = stopped
            state = record_stopped(job.message, job.delivery_info, self.hostname, error, signum=signum)
            return Outcome(state=state)  # acked, even with acks_late: stopped on purpose
        exitcode = child.process.exitcode
        logger.error("child %s running %s[%s] exited (exitcode %s)", child.process.pid, job.message.task,
                     job.message.id, exitcode)
        if job.acks_late and _requeue_lost(job):
            return Outcome(state=TaskState.RECEIVED, requeue=True)
        record_stopped(job.message, job.delivery_info, self.hostname,
                       WorkerLostError(f"worker child exited with code {exitcode} while running {job.message.task}"))
        return Outcome(state=TaskState.FAILURE)

    # -- pool_grow / pool_shrink -----------------------------------------
    def grow(self, n: int) -> None:
        for _ in range(n):
            child = self._spawn()
            with self._lock:
                self._children.append(child)
            self.concurrency += 1

    def shrink(self, n: int) -> None:
        """Retire ``n`` children, idle ones first; a busy one finishes its task before it goes."""
        if n >= self.concurrency:
            raise ValueError(f"cannot shrink the prefork pool by {n}: it has {self.concurrency} process(es) "
                             f"and keeps at least one")
        staying = [c for c in self._children if not c.retiring]
        for child in sorted(staying, key=lambda c: c.job is not None)[:n]:
            child.retiring = True
        self.concurrency -= n
        self._retire_idle()

    def _retire_idle(self) -> None:
        for child in [c for c in self._children if c.retiring and c.job is None]:
            try:
                child.pipe.send(None)  # the child's loop ends
            except (OSError, ValueError):
                pass
            child.process.join(timeout=5)
            if child.process.exitcode is None:
                self._kill(child, signal.SIGKILL)
                child.process.join(timeout=5)
            child.pipe.close()
            with self._lock:
                self._children.remove(child)
            logger.info("pool shrunk: child %s stopped", child.process.pid)

    def _replace_dead(self) -> None:
        self._retire_idle()
        for index, child in enumerate(self._children):
            if child.job is None and (child.doomed or not child.process.is_alive()):
                if child.doomed:
                    self._kill(child, signal.SIGKILL)
                    child.process.join(timeout=5)
                child.pipe.close()
                replacement = self._spawn()
                with self._lock:
                    self._children[index] = replacement

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
