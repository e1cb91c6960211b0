"""The prefork pool: child processes that each consume, run and ack on their own.

Each child is a :class:`~django_tasks_q.worker.child.ChildWorker`, a worker
loop with its own broker connection running one task at a time; no task
passes through the parent, so two children do twice what one does. This pool
is the parent's side (the worker around it is a
:class:`~django_tasks_q.worker.supervisor.Supervisor`): it forks the children,
replaces one that ends, and does what a child cannot do for itself:

* **hard time limit**: a child whose task runs past its ``time_limit`` is
  killed (SIGKILL), the task recorded FAILURE (``TimeLimitExceeded``), its
  errbacks and chord told -- *before* the kill, so that an ``acks_late``
  message the broker gives back finds its result final and is acked, not run
  again (``Worker._done_before``);
* **terminate** (a revoke with ``terminate=True``, ``control terminate``): the
  same, recorded REVOKED (``TaskRevokedError("terminated")``). SIGTERM and
  SIGINT become SIGKILL, since children ignore them; another signal is sent
  as given and the task recorded when the child dies of it;
* **a child that died under its task** (a crash, the OOM killer): FAILURE
  (``WorkerLostError``) -- except an ``acks_late`` task the policy gives back
  (``reject_on_worker_lost``; unset: once), which the broker redelivers,
  since the child never acked it. A sibling that receives a redelivered
  message first asks the parent to *settle* (deal with any child that just
  died) and then reads the result, so on this host the verdict is the
  parent's; another worker host may run such a copy before the parent
  recorded its failure, as it would after any worker's death.

The parent reads what each child runs from the child's shared page
(worker/child_slot.py) and talks to it over two pipes: requests to the
child (:meth:`PreforkPool.request`, answered by its ``parent-link`` thread)
and the child's ``settle`` questions, answered by :meth:`supervise`.

Children are forked from the worker after Django is set up, so they share its
imported code -- while the worker has one thread; once threads run (``-B``,
replacements, ``pool_grow``), through a fork server (:func:`_context`).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from django.conf import settings as django_settings
from django.db import connections

from ...core.protocol import TaskMessage
from ...core.registry import registry
from ...core.states import TaskState
from ...exceptions import TaskRevokedError, TimeLimitExceeded
from ..child_slot import COLD_SIGNAL, Running, SharedClock, Slot
from ..executor import record_stopped
from .base import Job, Pool

logger = logging.getLogger(__name__)
_fork = multiprocessing.get_context("fork")
_forkserver = multiprocessing.get_context("forkserver")
_forkserver.set_forkserver_preload(["django_tasks_q.worker.pools.child_boot"])
#: a cold shutdown SIGKILLs a child that has not left its task this long after being told to
COLD_GRACE = 5.0
#: a warm shutdown says which tasks it still waits for this often (seconds)
STOP_REPORT_EVERY = 10.0
#: how long a terminate for a task no child runs yet waits for one to start it (the revoke may beat the start)
TERMINATE_WAIT = 2.0


def _context() -> Any:
    """How to make a child: ``fork`` while the worker has one thread; else through a fork server.

    A forked child is a copy of every lock the worker's other threads held at
    that instant -- the beat or remote-control thread in the middle of an
    SQLite transaction, writing a log line -- with nobody left to release it:
    its first database write then waits on SQLite's copy of a lock for ever.
    So children made once threads run come from a fork server: a
    single-threaded process started fresh (not forked) that has set up Django
    once (``child_boot``) and forks them.
    """
    return _fork if threading.active_count() == 1 else _forkserver


class WorkerLostError(Exception):
    """The child process running a task exited before finishing it."""


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


@dataclass
class _Stop:
    """Why the parent stopped a child's task, and whether that is recorded already."""

    task_id: str
    error: BaseException
    signum: int
    recorded: bool


class _Child:
    def __init__(self, process: Any, pipe: Connection, asks: Connection, slot: Slot):
        self.process = process
        self.pipe = pipe  # our requests, the child's answers (and its goodbye)
        self.asks = asks  # the child's settle questions, our answers
        self.slot = slot
        self.lock = threading.Lock()  # one request at a time on ``pipe``
        self.numbers = itertools.count(1)
        self.stopped: _Stop | None = None
        self.retiring = False  # pool_shrink chose it: not replaced
        self.goodbye: dict[str, int] | None = None  # its totals, sent as it ended on its own

    @property
    def pid(self) -> int:
        return self.process.pid


class PreforkPool(Pool):
    name = "prefork"

    def __init__(self, concurrency: int, hostname: str, max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None, **options: Any):
        super().__init__(concurrency, hostname)
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        #: what a new child starts with (queues, limits, events); set by the Supervisor
        self.spec: Callable[[], dict[str, Any]] = dict
        #: what each child runs (worker/child.py's ``child_main``); set by the Supervisor, as the child
        #: module builds on the worker, which builds on the pools
        self.child_main: Callable[..., None] | None = None
        #: told of each task the parent recorded for a child: (message, state)
        self.on_ended: Callable[[TaskMessage, str], None] = lambda message, state: None
        self.clock = SharedClock(_forkserver)  # the events' Lamport clock, the children's too
        self._children: list[_Child] = []
        self._spawned = itertools.count()
        self._lock = threading.Lock()  # the children list and their ``stopped`` against other threads
        self._terminates: dict[str, tuple[int, float]] = {}  # task id -> (signal, give up at)
        self.ended_counts: Counter[str] = Counter()  # "processed", "failed" of children gone
        self.ended_totals: Counter[str] = Counter()
        self.stopping = False
        self.killed_all = False  # a cold shutdown killed the children: their tasks are not recorded

    # -- children --------------------------------------------------------
    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())

    def _spawn(self) -> _Child:
        connections.close_all()  # never share a database socket with a child
        context = _context()
        parent_end, child_end = context.Pipe()
        asks_parent, asks_child = context.Pipe()
        slot = Slot.create()
        loglevel = logging.getLevelName(logging.getLogger("django_tasks_q").getEffectiveLevel())
        database_names = {alias: connections[alias].settings_dict["NAME"] for alias in connections}
        tasks_q = _picklable(getattr(django_settings, "TASKS_Q", None))
        options = {**self.spec(), "max_tasks": self.max_tasks_per_child, "max_memory_kb": self.max_memory_per_child,
                   "clock": self.clock.for_child(next(self._spawned))}
        process = context.Process(target=self.child_main, name="TaskChild", daemon=True,
                                  args=(child_end, asks_child, slot.path, options, loglevel, database_names,
                                        tasks_q))
        process.start()
        child_end.close()
        asks_child.close()
        return _Child(process, parent_end, asks_parent, slot)

    def children(self) -> list[_Child]:
        return list(self._children)

    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    def running(self) -> list[tuple[Running, int]]:
        """What each busy child runs, with its pid."""
        found = []
        for child in self.children():
            running = child.slot.running()
            if running is not None:
                found.append((running, child.pid))
        return found

    def pid_of(self, job: Job) -> int:
        for running, pid in self.running():
            if running.task_id == job.message.id:
                return pid
        return os.getpid()

    def free_slots(self) -> int:
        return sum(1 for child in self.children() if child.slot.running(with_message=False) is None)

    def in_flight(self) -> int:
        return len(self.children()) - self.free_slots()

    def counts(self) -> tuple[int, int]:
        """(processed, failed) over every child, gone ones included."""
        processed, failed = self.ended_counts["processed"], self.ended_counts["failed"]
        for child in self.children():
            done, lost = child.slot.counts()
            processed, failed = processed + done, failed + lost
        return processed, failed

    # -- talking to children ---------------------------------------------
    def request(self, child: _Child, verb: str, *arguments: Any, timeout: float = 2.0) -> Any:
        """Ask one child (``ParentLink`` answers); ``TimeoutError`` when it did not answer in time."""
        with child.lock:
            number = next(child.numbers)
            try:
                child.pipe.send((number, verb, arguments))
                deadline = time.monotonic() + timeout
                while child.pipe.poll(max(0.0, deadline - time.monotonic())):
                    reply = child.pipe.recv()
                    if reply[0] == number:
                        return reply[1]
                    if reply[0] == "bye":
                        child.goodbye = reply[1]
            except (EOFError, OSError, ValueError) as exc:
                raise TimeoutError(f"child {child.pid} is gone") from exc
        raise TimeoutError(f"child {child.pid} did not answer {verb} within {timeout}s")

    def broadcast(self, verb: str, *arguments: Any, timeout: float = 2.0) -> list[Any]:
        """Ask every child; the answers of those that gave one."""
        answers = []
        for child in self.children():
            try:
                answers.append(self.request(child, verb, *arguments, timeout=timeout))
            except TimeoutError as exc:
                logger.warning("%s request not answered: %s", verb, exc)
        return answers

    # -- the parent's loop -----------------------------------------------
    def supervise(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a child to end or ask; then replace ended ones, enforce limits."""
        children = self.children()
        timeout = max(0.0, min(timeout, self._until_deadline(children)))
        ready = wait([c.process.sentinel for c in children] + [c.asks for c in children], timeout)
        self._reap(children)
        for child in children:
            if child.asks in ready:
                self._answer(child)
        self._enforce_time_limits()
        self._terminate_waiting()

    def _answer(self, child: _Child) -> None:
        """A child asks us to settle before it reads a redelivered message's result: we reaped already."""
        try:
            question = child.asks.recv()
            self._reap(self.children())
            child.asks.send(question)
        except (EOFError, OSError, ValueError):
            pass

    def _reap(self, children: list[_Child]) -> None:
        gone = wait([c.process.sentinel for c in children], 0)
        for index, child in enumerate(children):
            if child.process.sentinel in gone:
                self._ended(child, index)

    def _ended(self, child: _Child, index: int) -> None:
        child.process.join(timeout=5)
        running = child.slot.running()
        processed, failed = child.slot.counts()
        self.ended_counts.update(processed=processed, failed=failed)
        with child.lock:
            try:
                while child.pipe.poll(0):
                    reply = child.pipe.recv()
                    if reply[0] == "bye":
                        child.goodbye = reply[1]
            except (EOFError, OSError):
                pass
        self.ended_totals.update(child.goodbye or {})
        if running is not None:
            self._record_ended(child, running)
        elif child.process.exitcode and not self.stopping:
            logger.error("child %s exited (exitcode %s) between tasks", child.pid, child.process.exitcode)
        with self._lock:
            replace = not (self.stopping or child.retiring)
            replacement = self._spawn() if replace else None
            position = self._children.index(child) if child in self._children else index
            if replacement is not None:
                self._children[position] = replacement
            elif child in self._children:
                self._children.remove(child)
        child.slot.close()
        child.pipe.close()
        child.asks.close()

    def _record_ended(self, child: _Child, running: Running) -> None:
        stopped = child.stopped
        job = _job(running)
        self.ended_counts.update(processed=1)
        self.ended_totals[running.task_name] += 1
        if stopped is not None and stopped.task_id == running.task_id:
            if not stopped.recorded:
                record_stopped(job.message, job.delivery_info, self.hostname, stopped.error, signum=stopped.signum)
            state = TaskState.REVOKED if isinstance(stopped.error, TaskRevokedError) else TaskState.FAILURE
            self.ended_counts.update(failed=state == TaskState.FAILURE)
            self.on_ended(job.message, state)
            return
        exitcode = child.process.exitcode
        if self.killed_all:
            logger.warning("cold shutdown: %s[%s] was stopped in child %s", running.task_name, running.task_id,
                           child.pid)
            return
        logger.error("child %s running %s[%s] exited (exitcode %s)", child.pid, running.task_name, running.task_id,
                     exitcode)
        if running.acks_late and _requeue_lost(job):
            logger.warning("%s[%s] was not acked: the broker gives it back to the queue", running.task_name,
                           running.task_id)
            return
        record_stopped(job.message, job.delivery_info, self.hostname,
                       WorkerLostError(f"worker child exited with code {exitcode} while running {running.task_name}"))
        self.ended_counts.update(failed=1)
        self.on_ended(job.message, TaskState.FAILURE)

    # -- hard time limit and terminate ---------------------------------
    @staticmethod
    def _until_deadline(children: list[_Child]) -> float:
        deadlines = [r.deadline for c in children if (r := c.slot.running(with_message=False)) and r.deadline]
        return min(deadlines) - time.monotonic() if deadlines else float("inf")

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        for child in self.children():
            running = child.slot.running(with_message=False)
            if running is None or running.deadline is None or now < running.deadline or child.stopped:
                continue
            running = child.slot.running()  # with its message, to record it
            if running is None:
                continue
            limit = running.message.time_limit if running.message is not None else "?"
            error = TimeLimitExceeded(f"task {running.task_name} [{running.task_id}] ran past its hard time limit "
                                      f"({limit}s); its worker child was killed")
            logger.error("hard time limit (%ss) exceeded for %s[%s]; killing child %s", limit, running.task_name,
                         running.task_id, child.pid)
            self._stop(child, running, error, signal.SIGKILL, signal.SIGKILL)

    def terminate(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        # children ignore SIGTERM/SIGINT (worker/child.py): stopping the task takes SIGKILL
        sent = signal.SIGKILL if signum in (signal.SIGTERM, signal.SIGINT) else signum
        for child in self.children():
            running = child.slot.running(with_message=False)
            if running is not None and running.task_id == task_id:
                if child.stopped is None:
                    logger.warning("terminating %s[%s]: signal %s to child %s", running.task_name, task_id, sent,
                                   child.pid)
                    self._stop(child, running, TaskRevokedError("terminated"), signum, sent)
                return True
        with self._lock:  # not started yet (the revoke beat the start): stopped if it starts soon
            self._terminates[task_id] = (signum, time.monotonic() + TERMINATE_WAIT)
        return False

    def _terminate_waiting(self) -> None:
        if not self._terminates:
            return
        now = time.monotonic()
        with self._lock:
            waiting, self._terminates = self._terminates, {}
        for task_id, (signum, until) in waiting.items():
            if not self.terminate(task_id, signum) and until > now:
                with self._lock:
                    self._terminates.setdefault(task_id, (signum, until))
            elif until <= now:
                with self._lock:
                    self._terminates.pop(task_id, None)

    def _stop(self, child: _Child, running: Running, error: BaseException, signum: int, sent: int) -> None:
        """Record (for a kill) and stop ``child``'s task -- unless it ended meanwhile."""
        record_now = sent == signal.SIGKILL
        with self._lock:
            if child.stopped is not None:
                return
            child.stopped = _Stop(running.task_id, error, signum, recorded=record_now)
        if record_now:
            full = child.slot.running()
            if full is None or full.seq != running.seq:  # it ended on its own meanwhile
                with self._lock:
                    child.stopped = None
                return
            record_stopped(full.message or _job(full).message, full.delivery_info, self.hostname, error,
                           signum=signum)
        if child.slot.seq() == running.seq and child.process.exitcode is None:
            try:
                os.kill(child.pid, sent)
            except ProcessLookupError:
                pass

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
        staying = [c for c in self.children() if not c.retiring]
        for child in sorted(staying, key=lambda c: c.slot.running(with_message=False) is not None)[:n]:
            child.retiring = True
            try:
                self.request(child, "stop", timeout=1.0)
            except TimeoutError:
                logger.warning("child %s did not take the stop; it stops when its task ends", child.pid)
        self.concurrency -= n

    def stop(self, wait: bool = True, cold: Callable[[], bool] = lambda: False) -> None:
        """Tell every child to stop (warm: each finishes its task and gives back what it reserved).

        Until they have, time limits and terminates are still enforced. ``cold()`` turning true, or
        ``wait=False``, makes each leave its task (``COLD_SIGNAL``; SIGKILL after ``COLD_GRACE`` seconds):
        an ``acks_late`` task goes back to the queue, an early-acked one is abandoned.
        """
        self.stopping = True
        if wait:
            for child in self.children():
                try:
                    self.request(child, "stop", timeout=1.0)
                except TimeoutError:
                    pass
        kill_at = None
        report_at = time.monotonic() + STOP_REPORT_EVERY
        while self._children:
            if time.monotonic() > report_at:  # a long wait says what it waits for
                report_at = time.monotonic() + STOP_REPORT_EVERY
                for running, pid in self.running():
                    logger.warning("warm shutdown: still waiting for %s[%s] in child %s", running.task_name,
                                   running.task_id, pid)
            if kill_at is None and (not wait or cold()):
                self.killed_all = True
                kill_at = time.monotonic() + COLD_GRACE
                self._signal_all(COLD_SIGNAL)
            if kill_at is not None and time.monotonic() > kill_at:
                self._signal_all(signal.SIGKILL)
                kill_at = float("inf")
            self.supervise(0.1)

    def _signal_all(self, signum: int) -> None:
        for child in self.children():
            if child.process.exitcode is None:
                try:
                    os.kill(child.pid, signum)
                except ProcessLookupError:
                    pass

    def info(self) -> dict[str, Any]:
        return {**super().info(), "processes": self.pids()}


def _picklable(value: Any) -> Any:
    """``value`` if it can travel to a child of the fork server, else ``None`` (the child reads its settings)."""
    try:
        pickle.dumps(value)
    except Exception:
        return None
    return value


def _job(running: Running) -> Job:
    """The job a child ran, from its slot; only its id and name when its message was too large to keep."""
    message = running.message or TaskMessage(id=running.task_id, task=running.task_name)
    return Job(message, running.delivery_info, running.acks_late)


__all__ = ["PreforkPool", "WorkerLostError"]
