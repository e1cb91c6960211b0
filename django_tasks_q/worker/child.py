"""A prefork child: a worker of its own that consumes, runs and acks, watched by its parent.

Each child of ``-P prefork`` (worker/supervisor.py) is a :class:`ChildWorker`:
the ordinary worker loop -- its own broker connection, prefetch window, acks,
eta holds, rate limits, revocation checks, task events -- running one task at
a time in its main thread, as the solo pool does. Nothing about a task
passes through the parent, so the children scale with the cores.

What the child leaves to its parent: the worker's name (heartbeat row,
remote control, worker events), hard time limits and terminate (the parent
kills the child; see :mod:`~.child_slot` for how it knows what runs), and
recording a task whose child died under it. What it adds for the parent:

* its :class:`~.child_slot.Slot`, written as tasks start and end;
* a :class:`ParentLink` thread answering the parent's requests on a pipe
  (warm stop, queues and limits changed by remote control, ``inspect
  reserved`` / ``scheduled``), even while a task runs in the main thread;
* when it ends on its own (``--max-tasks-per-child``, ``--max-memory-per-child``)
  it gives its reserved messages back first (a warm stop) and tells the
  parent its totals, so none is lost and the parent replaces it.

Children ignore SIGINT and SIGTERM: a signal to the process group is the
parent's to act on, and the parent tells each child to stop -- over the pipe
for a warm stop, with ``COLD_SIGNAL`` (SIGUSR2) for a cold one.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from django.conf import settings as django_settings
from django.db import connections

from .. import signals
from ..conf import settings
from ..loops import Loop
from ..results.backend import get_backend
from .child_slot import COLD_SIGNAL, OFF_LOOP, OFF_RECEIVED, SharedClock, Slot
from .control_actions import add_queue, cancel_queue
from .handoff import Pending, Refused
from .logging import configure_logging
from .monitor import LoopStats
from .pools.base import Job
from .pools.solo import SoloPool
from .revocations import RevocationWatch
from .worker import Worker

logger = logging.getLogger(__name__)


class ChildPool(SoloPool):
    """The solo pool, in a child whose hard time limit the parent enforces."""

    name = "prefork"
    enforces_hard_limit = True


class _ParentTerminates:
    """The child's revocation watch only drops revoked messages: the parent terminates running tasks."""

    @staticmethod
    def terminate(task_id: str, signum: int) -> bool:
        return False


class SlotStats(LoopStats):
    """:class:`LoopStats` that also writes what the parent's monitor reads into the child's slot."""

    def __init__(self, slot: Slot):
        super().__init__()
        self.slot = slot

    def tick(self) -> None:  # every pass of the loop: one stamp; the error is cleared only when there is one
        if self.broker_error_since is not None:
            self.slot.broker_error(None)
        super().tick()
        self.slot.stamp(OFF_LOOP)

    def received(self) -> None:
        super().received()
        self.slot.stamp(OFF_RECEIVED)

    def finished(self, failed: bool) -> None:
        super().finished(failed)
        self.slot.finished(self.processed, self.failed)

    def connection_failed(self, exc: BaseException) -> None:
        super().connection_failed(exc)
        self.slot.broker_error(self.broker_error)


class ChildWorker(Worker):
    """One prefork child; see the module docstring."""

    def __init__(self, pipe: Connection, asks: Connection, slot: Slot, *, queues: list[str], hostname: str,
                 prefetch_multiplier: int, events: bool, max_tasks: int | None, max_memory_kb: int | None,
                 time_limits: dict[str, Any], rate_limits: dict[str, float | None], clock: SharedClock):
        super().__init__(queues=queues, concurrency=1, pool="solo", hostname=hostname,
                         prefetch_multiplier=prefetch_multiplier, heartbeat=0, events=events)
        self.events.clock = clock
        self.pool = ChildPool(1, self.hostname)
        self.slot = slot
        self.stats = SlotStats(slot)
        self.revocations = RevocationWatch(_ParentTerminates(), self.hostname)
        self.link = ParentLink(self, pipe)
        self.asks = asks
        self.max_tasks = max_tasks
        self.max_memory_kb = max_memory_kb
        self.done = 0
        self._next_cleanup = float("inf")  # the parent prunes old results, once for all its children
        for name, (hard, soft) in time_limits.items():
            self.time_limits.set(name, soft=soft, hard=hard)
        for name, per_second in rate_limits.items():
            self.rate_limits.override(name, per_second)

    def background_loops(self) -> list[Loop]:
        return [self.revocations.loop, self.link.loop]

    # -- what the parent does instead -------------------------------------
    def _starting(self) -> None:
        self.pool.start()

    def _online(self) -> None:
        pass

    def _announce_shutdown(self) -> None:
        pass

    def _shutdown(self) -> None:
        self.pool.stop(wait=not self.cold)

    def _offline(self) -> None:
        self.events.stop()
        self.link.goodbye(dict(self.totals))

    def _done_before(self, job: Job) -> bool:
        """A redelivered message: first let the parent record a task a sibling just died under (its
        ``settle``), so that the result read next is the parent's verdict (worker/pools/prefork.py)."""
        if job.delivery_info.get("redelivered"):
            self._await_parent()
        return super()._done_before(job)

    def _await_parent(self) -> None:
        try:
            self.asks.send("settle")
            if self.asks.poll(5.0):
                self.asks.recv()
                return
        except (EOFError, OSError, ValueError):
            pass
        logger.warning("the prefork parent did not answer; reading the redelivered task's result as it is")

    # -- the slot ------------------------------------------------------------
    def _begin(self, job: Job) -> None:
        limit = job.message.time_limit
        self.slot.started(job.message, job.delivery_info, job.acks_late, time.time(),
                          time.monotonic() + limit if limit else None)
        super()._begin(job)

    def _finish(self, job: Job, outcome: Any) -> None:
        super()._finish(job, outcome)
        self.done += 1
        if self.max_tasks and self.done >= self.max_tasks:
            logger.info("child %s ran %d task(s) (--max-tasks-per-child); replacing it", os.getpid(), self.done)
            self.stopping = True
        elif self.max_memory_kb and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > self.max_memory_kb:
            logger.warning("child %s passed --max-memory-per-child (%s KB); replacing it", os.getpid(),
                           self.max_memory_kb)
            self.stopping = True


class ParentLink:
    """The child's end of its pipe: the parent's requests, answered from a thread of their own.

    A request is ``(number, verb, arguments)``; the answer ``(number, value)``
    where a refusal's value is ``("refused", why)``. Queue changes go through
    the main loop (:class:`~.handoff.Handoff`), as remote control does in a
    worker. End of file -- the parent is gone -- stops the child, warm.
    """

    def __init__(self, worker: ChildWorker, pipe: Connection):
        self.worker = worker
        self.pipe = pipe
        self.loop = Loop("parent-link", self.serve, 0, what="answer the prefork parent", close_db=False)
        #: the process that made us: a new parent means ours died (a sibling forked later holds our pipe's
        #: other end too, so a dead parent does not always show as end of file)
        self.parent_pid = os.getppid()

    def serve(self) -> None:
        try:
            if os.getppid() != self.parent_pid:
                raise EOFError("the parent process is gone")
            if not self.pipe.poll(0.25):
                return
            number, verb, arguments = self.pipe.recv()
        except (EOFError, OSError):
            if not self.worker.stopping:
                logger.warning("child %s lost its parent; stopping", os.getpid())
                self.worker.stopping = True
            self.loop.wait(0.25)
            return
        try:
            value = getattr(self, "do_" + verb)(*arguments)
        except Refused as exc:
            value = ("refused", str(exc))
        except Exception as exc:
            logger.exception("the prefork parent's %s request failed", verb)
            value = ("refused", f"{type(exc).__name__}: {exc}")
        try:
            self.pipe.send((number, value))
        except (OSError, ValueError):
            pass

    def goodbye(self, totals: dict[str, int]) -> None:
        try:
            self.pipe.send(("bye", totals))
        except (OSError, ValueError):
            pass

    # -- the requests --------------------------------------------------------
    def do_stop(self) -> None:
        self.worker.stopping = True

    def do_reserved(self) -> list[tuple[Any, dict, bool]]:
        worker = self.worker
        jobs = list(worker.ready) + worker.rate_limits.held_jobs()
        return [(job.message, job.delivery_info, job.acks_late) for job in jobs]

    def do_scheduled(self) -> list[tuple[float, Any, dict, bool]]:
        return [(eta, job.message, job.delivery_info, job.acks_late) for eta, _seq, job in list(self.worker.held)]

    def do_totals(self) -> dict[str, int]:
        return dict(self.worker.totals)

    def do_queue(self, name: str, add: bool) -> str:
        """``add_consumer`` / ``cancel_consumer`` as a worker makes them, in the child's main loop."""
        change = add_queue if add else cancel_queue
        try:
            return self.worker.handoff.call(lambda: change(self.worker, name))
        except Pending:
            return "pending"

    def do_time_limit(self, task_name: str, soft: Any, hard: Any) -> None:
        self.worker.time_limits.set(task_name, soft=soft, hard=hard)

    def do_rate_limit(self, task_name: str, per_second: float | None) -> None:
        self.worker.rate_limits.override(task_name, per_second)

    def do_events(self, enabled: bool) -> None:
        self.worker.events.enable() if enabled else self.worker.events.disable()

    def do_reconnect(self) -> None:
        self.worker.stats.reconnect_requested = True


def _cold(signum: int, frame: Any) -> None:
    """Leave the task mid-run, as the solo pool's cold shutdown does: ``SystemExit`` unwinds the worker
    loop, which closes its broker connection on the way out -- so what this child held unacked (an
    ``acks_late`` task, reserved messages) goes back to the queue now, not after a visibility timeout."""
    raise SystemExit(1)


def child_main(pipe: Connection, asks: Connection, slot_path: str, options: dict[str, Any], loglevel: str,
               database_names: dict[str, Any], tasks_q: dict[str, Any] | None = None) -> None:
    """The child process: set up as the worker was, then run a :class:`ChildWorker` until told to stop."""
    configure_logging(loglevel)
    # A child of the fork server has only what the settings file says: give it the databases and the
    # TASKS_Q the worker really uses (a test run, say, changes them at run time).
    for alias, name in database_names.items():
        connections[alias].settings_dict["NAME"] = name
    if tasks_q is not None:
        django_settings.TASKS_Q = tasks_q
        settings.reload()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(COLD_SIGNAL, _cold)
    slot = Slot.attach(slot_path)
    get_backend()  # built before the first task, not inside it
    signals.send(signals.worker_process_init, sender=None, pid=os.getpid())
    ChildWorker(pipe, asks, slot, **options).run()


__all__ = ["ChildWorker", "ParentLink", "child_main"]
