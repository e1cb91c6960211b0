"""What the worker's helper threads may see of a worker, and what control commands may change.

The monitor (worker/monitor.py), remote control (worker/remote_control.py)
and its control commands (worker/control_actions.py) run beside the main
loop of a :class:`~django_tasks_q.worker.worker.Worker`. They are given
the worker typed as one of these protocols rather than as the class, so
that what they touch is listed here, checked by mypy where
``Worker.background_loops`` builds them, and a test can hand them a small
stand-in.

Reads of a container the main thread mutates (``active``, ``ready``,
``held``) copy it first; see ``remote_control._copy``.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .consumers import ConsumerSet
    from .events import EventDispatcher
    from .handoff import Handoff
    from .limit_overrides import LimitOverrides
    from .monitor import LoopStats
    from .pools.base import Job, Pool
    from .ratelimit import RateLimiter
    from .revocations import RevocationWatch


class WorkerView(Protocol):
    """What the monitor and the ``inspect`` commands read (and ``shutdown`` sets: ``stopping``)."""

    hostname: str
    queue_names: list[str]  # replaced, never mutated in place, by add/cancel_consumer
    pool: Pool
    prefetch: int
    stopping: bool
    stats: LoopStats  # the main loop's counters and stamps, for the watchdog
    active: dict[str, tuple[Job, float]]  # running now: (job, epoch seconds started)
    ready: deque[Job]  # received, waiting for a free slot
    held: list[tuple[float, int, Job]]  # eta tasks held here (a heap): (eta epoch seconds, seq, job)
    totals: Counter[str]  # finished tasks by name
    rate_limits: RateLimiter
    revocations: RevocationWatch
    events: EventDispatcher
    remote_control: Any  # the REMOTE_CONTROL setting: True, False or "read-only"

    def send_worker_event(self, kind: str) -> None: ...


class ControlledWorker(WorkerView, Protocol):
    """What the control commands that change a running worker use besides (worker/control_actions.py)."""

    consumers: ConsumerSet | None  # None while not connected
    handoff: Handoff  # calls to run in the main loop, which owns the channel and the pool
    time_limits: LimitOverrides

    def update_prefetch(self) -> None: ...


__all__ = ["ControlledWorker", "WorkerView"]
