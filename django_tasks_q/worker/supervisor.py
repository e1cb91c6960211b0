"""The prefork worker's parent: it supervises children that consume, and is the worker to the world.

With ``-P prefork`` the process ``manage.py taskworker`` starts is a
:class:`Supervisor`. It consumes no task queue: its children do, each a
worker loop of its own (worker/child.py), and its pool
(:class:`~.pools.prefork.PreforkPool`) forks, replaces, time-limits and
terminates them. The parent keeps what belongs to the worker as a whole --
its name, the heartbeat row and watchdog (worker/monitor.py), remote control
(worker/remote_control.py), ``worker-*`` events, the revocation watch that
terminates running tasks, result clean-up, the worker signals -- and answers
for its children: the attributes the monitor and remote control read
(:class:`~.view.WorkerView`) are views over them here.

* ``active``, counters and the watchdog's stamps come from the children's
  shared pages (worker/child_slot.py), read when asked for;
* ``reserved``, ``scheduled`` and per-task totals are asked of each child
  over its pipe (``inspect`` waits up to two seconds per child);
* ``add_consumer`` / ``cancel_consumer``, ``time_limit``, ``rate_limit``,
  ``enable_events`` / ``disable_events`` and the watchdog's reconnect are
  sent to every child, and remembered for the children started later.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

from .. import signals
from ..core.protocol import TaskMessage
from .child import child_main
from .child_slot import Running
from .events import EventDispatcher
from .executor import Outcome
from .handoff import Refused
from .limit_overrides import LimitOverrides, Limits
from .pools.base import Job
from .pools.prefork import PreforkPool
from .ratelimit import RateLimiter
from .worker import Worker

logger = logging.getLogger(__name__)


#: messages each child reserves unless ``--prefetch-multiplier`` is given: one, so that a task never
#: waits behind a sibling's long one while another child is idle (Celery's parent hands tasks to free
#: children for the same reason)
CHILD_PREFETCH = 1


def create_worker(pool: str = "prefork", **options: Any) -> Worker:
    """The worker for ``pool``: a :class:`Supervisor` of consuming children for prefork, else a :class:`Worker`."""
    return Supervisor(pool=pool, **options) if pool == "prefork" else Worker(pool=pool, **options)


def _refusal(answer: Any) -> str | None:
    if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "refused":
        return str(answer[1])
    return None


class _Snapshot(Mapping):
    """A mapping read from the children: taken once, and kept for ``FRESH`` seconds, so that ``dict(view)``
    or ``view.values()`` -- a key list, then one lookup per key -- reads the children once, not per key."""

    FRESH = 0.2

    def __init__(self, pool: PreforkPool):
        self.pool = pool
        self._taken: tuple[float, dict] = (-1.0, {})

    def _read(self) -> dict:
        raise NotImplementedError

    def _now(self) -> dict:
        taken_at, values = self._taken
        if time.monotonic() - taken_at > self.FRESH:
            values = self._read()
            self._taken = (time.monotonic(), values)
        return values

    def __getitem__(self, key: str) -> Any:
        return self._now()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())


class RunningTasks(_Snapshot):
    """``active``: task id -> (job, epoch seconds started), read from the children's pages."""

    def _read(self) -> dict[str, tuple[Job, float]]:
        return {running.task_id: (_job(running), running.started) for running, _pid in self.pool.running()}

    def __len__(self) -> int:  # the heartbeat's count: no message unpickled
        return self.pool.in_flight()


def _job(running: Running) -> Job:
    """A running task as ``inspect active`` reads a job; its ack is the child's, so only whether it was made
    is told: an early-acked task was acked as it started, an ``acks_late`` one is not yet."""
    message = running.message or TaskMessage(id=running.task_id, task=running.task_name)
    return Job(message, running.delivery_info, running.acks_late,
               kombu_message=SimpleNamespace(acknowledged=not running.acks_late))


class Asked:
    """What the children hold and only they know (``reserved``, ``scheduled``): asked when read."""

    def __init__(self, pool: PreforkPool, verb: str):
        self.pool, self.verb = pool, verb

    def _gather(self) -> list[Any]:
        items: list[Any] = []
        for answer in self.pool.broadcast(self.verb):
            if _refusal(answer) is None:
                items.extend(answer)
        return items

    def __iter__(self) -> Iterator[Any]:
        for item in self._gather():
            if self.verb == "scheduled":
                eta, message, delivery_info, acks_late = item
                yield eta, 0, Job(message, delivery_info, acks_late)
            else:
                message, delivery_info, acks_late = item
                yield Job(message, delivery_info, acks_late)

    def __len__(self) -> int:
        return len(self._gather())

    def __bool__(self) -> bool:
        return len(self) > 0


class Totals(_Snapshot):
    """``totals``: finished tasks by name, over every child (gone ones included)."""

    def _read(self) -> Counter[str]:
        total = Counter(self.pool.ended_totals)
        for answer in self.pool.broadcast("totals"):
            if isinstance(answer, dict):
                total.update(answer)
        return total


class ChildrenStats:
    """The watchdog's counters and stamps (what :class:`~.monitor.LoopStats` holds for a worker that
    consumes): the parent's loop and the children's pages together, read when asked for."""

    def __init__(self, pool: PreforkPool):
        self.pool = pool
        self.loop_at = self._started = time.monotonic()

    def tick(self) -> None:
        self.loop_at = time.monotonic()

    def _stamps(self) -> list[tuple[float, float, float]]:
        return [child.slot.stamps() for child in self.pool.children()]

    def _errors(self) -> list[tuple[float, str]]:
        found = [child.slot.broker_error_since() for child in self.pool.children()]
        return sorted((since, text) for since, text in found if since is not None)

    @property
    def processed(self) -> int:
        return self.pool.counts()[0]

    @property
    def failed(self) -> int:
        return self.pool.counts()[1]

    @property
    def received_at(self) -> float:
        return max([self._started] + [received for _loop, received, _progress in self._stamps()])

    @property
    def progress_at(self) -> float:
        return max([self._started] + [max(received, progress) for _loop, received, progress in self._stamps()])

    @property
    def broker_error_since(self) -> float | None:
        errors = self._errors()
        return errors[0][0] if errors else None

    @property
    def broker_error(self) -> str:
        errors = self._errors()
        return errors[0][1] if errors else ""

    @property
    def reconnect_requested(self) -> bool:
        return False

    @reconnect_requested.setter
    def reconnect_requested(self, value: bool) -> None:
        if value:  # the watchdog found the consumers silent: each child drops its connection, makes a new one
            self.pool.broadcast("reconnect")

    def connection_failed(self, exc: BaseException) -> None:
        """Not called: the parent has no broker connection of its own (the children report theirs)."""


class ForwardedTimeLimits(LimitOverrides):
    """``time_limit``: checked here, then set in every child (and given to later ones)."""

    def __init__(self, pool: PreforkPool):
        super().__init__()
        self.pool = pool

    def set(self, task_name: str, soft: Any, hard: Any) -> Limits:
        limits = super().set(task_name, soft, hard)
        for answer in self.pool.broadcast("time_limit", task_name, soft, hard):
            if (why := _refusal(answer)) is not None:
                raise Refused(why)
        return limits

    def all(self) -> dict[str, Limits]:
        return dict(self._limits)


class ForwardedRateLimits(RateLimiter):
    """``rate_limit``: set in every child (and given to later ones); the children hold the waiting jobs."""

    def __init__(self, pool: PreforkPool):
        super().__init__()
        self.pool = pool
        self.overrides: dict[str, float | None] = {}

    def override(self, task_name: str, per_second: float | None) -> None:
        super().override(task_name, per_second)
        self.overrides[task_name] = per_second
        self.pool.broadcast("rate_limit", task_name, per_second)


class ForwardedEvents(EventDispatcher):
    """The parent's ``worker-*`` events; ``enable_events`` / ``disable_events`` reach the children's task events."""

    def __init__(self, pool: PreforkPool, hostname: str, wanted: bool, heartbeat: float):
        super().__init__(hostname, heartbeat=heartbeat, clock=pool.clock)
        self.pool = pool
        self.wanted = wanted  # what children start with

    def enable(self) -> bool:
        enabled = super().enable()
        if enabled and not self.wanted:
            self.wanted = True
            self.pool.broadcast("events", True)
        return enabled

    def disable(self) -> None:
        super().disable()
        if self.wanted:
            self.wanted = False
            self.pool.broadcast("events", False)


class ChildrenConsumers:
    """``add_consumer`` / ``cancel_consumer``: done in every child (later ones start with the new queues)."""

    def __init__(self, pool: PreforkPool):
        self.pool = pool

    def _change(self, name: str, add: bool) -> None:
        for answer in self.pool.broadcast("queue", name, add):
            if (why := _refusal(answer)) is not None:
                raise Refused(why)

    def add(self, name: str) -> None:
        self._change(name, True)

    def cancel(self, name: str) -> None:
        self._change(name, False)


class Supervisor(Worker):
    """``taskworker -P prefork``: see the module docstring."""

    pool: PreforkPool
    events: ForwardedEvents
    time_limits: ForwardedTimeLimits
    rate_limits: ForwardedRateLimits

    def __init__(self, **options: Any):
        super().__init__(**options)
        # a window asked for on the command line is each child's (tiny tasks travel in batches); else one
        self.child_prefetch = options.get("prefetch_multiplier") or CHILD_PREFETCH
        pool = self.pool
        pool.spec = self._child_spec
        pool.child_main = child_main
        pool.on_ended = self._task_ended
        self.active = RunningTasks(pool)  # type: ignore[assignment]
        self.ready = Asked(pool, "reserved")  # type: ignore[assignment]
        self.held = Asked(pool, "scheduled")  # type: ignore[assignment]
        self.totals = Totals(pool)  # type: ignore[assignment]
        self.stats = ChildrenStats(pool)  # type: ignore[assignment]
        self.time_limits = ForwardedTimeLimits(pool)
        self.rate_limits = ForwardedRateLimits(pool)
        self.events = ForwardedEvents(pool, self.hostname, self.send_events, self.heartbeat)
        self.consumers = ChildrenConsumers(pool)  # type: ignore[assignment]
        self.update_prefetch()

    def _child_spec(self) -> dict[str, Any]:
        return {"queues": list(self.queue_names), "hostname": self.hostname,
                "prefetch_multiplier": self.child_prefetch, "events": self.events.wanted,
                "time_limits": self.time_limits.all(), "rate_limits": dict(self.rate_limits.overrides)}

    def _task_ended(self, message: TaskMessage, state: str) -> None:
        """A task the parent recorded for a child (killed, or lost with it): its event."""
        self.events.task_finished(message, Outcome(state=state))

    def _serve(self) -> None:
        """The parent's loop: control changes, children, periodic work; no broker connection of its own."""
        while not self.stopping:
            self.stats.tick()
            self.handoff.run_pending()  # pool_grow / pool_shrink and queue changes
            self.pool.supervise(0.05)
            if time.time() >= self._next_cleanup:
                self._cleanup_results()
            self._run_periodic()

    def update_prefetch(self) -> None:
        self.prefetch = self.pool.concurrency * self.child_prefetch  # the children's windows together

    def _shutdown(self) -> None:
        logger.info("warm shutdown: waiting for %d running task(s)", self.pool.in_flight())
        self.pool.stop(wait=not self.cold, cold=lambda: self.cold)
        signals.send(signals.worker_shutdown, sender=self)
        logger.info("%s stopped", self.hostname)


__all__ = ["Supervisor", "create_worker"]
