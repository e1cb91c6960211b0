"""The worker's heartbeat and watchdog: a background loop beside the main loop.

Every ``WORKER_HEARTBEAT`` seconds its loop (:class:`~.loops.Loop` ``monitor``) writes the worker's
:class:`~django_tasks_q.models.Worker` row (its own database connection,
closed after each beat) with the counters the main loop keeps in
:class:`LoopStats`. Before each write it looks for a worker that is alive
but not working -- the failures a process supervisor cannot see:

* **the main loop stopped iterating** (blocked on a lock, a hung database
  call, a deadlock) while no task runs inline in it (the solo pool runs
  tasks in the main thread, which is not a stall);
* **no broker connection**: the loop has been reconnecting for longer than
  ``WORKER_STUCK_AFTER``;
* **the consumer stopped receiving**: pool slots are free, nothing arrived
  for ``WORKER_STUCK_AFTER`` seconds, yet the worker's queues hold ready
  messages on two looks a few seconds apart (measured on a broker
  connection of its own) -- a connection that went silent without an
  error, e.g. a NAT or firewall that dropped the flow. The monitor then
  asks the main loop to reconnect.

A finding is logged once at ERROR and stored in ``Worker.problem`` (what
``manage.py taskhealth`` reports); it is cleared, with an INFO line, once
the condition is gone (the loop iterates, a message arrives, the queues are
empty). The thread never touches the main loop's broker connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.utils import timezone
from kombu.exceptions import OperationalError

from ..broker.connection import mask_url, new_connection
from ..broker.queues import consumer_queue
from ..conf import settings
from ..loops import Loop, spawn

if TYPE_CHECKING:
    from .view import WorkerView

logger = logging.getLogger(__name__)


class ConsumerStalled(OperationalError):
    """Raised in the main loop when the monitor found its consumer silent: reconnect."""


class LoopStats:
    """What the main loop tells the monitor: counters and monotonic stamps.

    Written only by the main thread, read by the monitor; each attribute is
    one value, so no lock is needed.
    """

    def __init__(self) -> None:
        now = time.monotonic()
        self.loop_at = now  # the main loop's last iteration
        self.received_at = now  # the last delivery from the broker
        self.progress_at = now  # the last delivery or finished task
        self.processed = 0
        self.failed = 0
        self.broker_error = ""  # set while the loop is reconnecting
        self.broker_error_since: float | None = None
        self.reconnect_requested = False  # set by the monitor

    def tick(self) -> None:
        """One iteration of the serving loop: alive and connected."""
        self.loop_at = time.monotonic()
        if self.broker_error_since is not None:
            self.broker_error, self.broker_error_since = "", None

    def received(self) -> None:
        self.received_at = self.progress_at = time.monotonic()

    def finished(self, failed: bool) -> None:
        self.processed += 1
        self.failed += failed
        self.progress_at = time.monotonic()

    def connection_failed(self, exc: BaseException) -> None:
        self.broker_error = f"{type(exc).__name__}: {exc}"
        if self.broker_error_since is None:
            self.broker_error_since = time.monotonic()

    def check_reconnect(self, connection: Any) -> None:
        """Called by the loop: if the monitor asked for a new connection, drop this one and raise.

        The connection is dropped without the closing handshake (kombu's
        ``collect``): on a connection that went silent an AMQP close would
        wait for an answer that never comes. The raised ``ConsumerStalled``
        takes the loop's usual reconnect path.
        """
        if self.reconnect_requested:
            self.reconnect_requested = False
            try:
                connection.collect()
            except Exception:  # it is being thrown away anyway
                logger.debug("collecting a silent connection failed", exc_info=True)
            raise ConsumerStalled("the watchdog found the consumer silent while its queues hold messages")


def queue_depth(channel: Any, queue: Any) -> int:
    """Ready (unclaimed, unacknowledged) messages in ``queue``.

    kombu's virtual transports (redis, django://) count them with the
    channel's ``_size``; a passive declare there refuses a redis queue that
    is merely empty. On AMQP a passive declare reports ``message_count``.
    """
    size = getattr(channel, "_size", None)
    if size is not None:
        return int(size(queue.name))
    return int(queue(channel).queue_declare(passive=True).message_count)


class Monitor:
    """Heartbeat writer and watchdog for one ``Worker``; see the module docstring."""

    def __init__(self, worker: WorkerView, interval: float, stuck_after: float | None = None):
        self.worker = worker
        self.stats: LoopStats = worker.stats
        self.interval = interval
        self.stuck_after = settings.WORKER_STUCK_AFTER if stuck_after is None else stuck_after
        self.problem = ""
        self.loop = Loop("monitor", self.beat, interval, what="beat", join_timeout=10.0,
                         before=lambda: self._write(first=True), after=lambda: self._write(stopped=True))
        self._suspect_since: float | None = None  # first look at full queues while silent
        self._last_depth_check = -1e9
        self._reconnect_at = -1e9
        self._depth_probe: threading.Thread | None = None
        self._beat_failed = False

    def start(self) -> "Monitor":
        self.loop.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Write ``stopped_at`` (from the monitor's own thread) and end it."""
        self.loop.stop(timeout)

    # -- the loop --------------------------------------------------------
    def beat(self) -> None:
        """One round of the loop: the watchdog's look, the row, a ``worker-heartbeat`` event."""
        try:
            self.check()
        except Exception:
            logger.exception("watchdog check failed; will check again")
        self._write()
        send_event = getattr(self.worker, "send_worker_event", None)
        if send_event is not None:  # a worker-heartbeat event, when events are on (worker/events.py)
            send_event("worker-heartbeat")

    def _write(self, first: bool = False, stopped: bool = False) -> None:
        from ..models import Worker as WorkerRow

        worker, stats, now = self.worker, self.stats, timezone.now()
        values: dict[str, Any] = {
            "last_heartbeat": now,
            "processed": stats.processed,
            "failed": stats.failed,
            "active": self._safely(worker.pool.in_flight, 0),
            "last_progress_at": now - timedelta(seconds=time.monotonic() - stats.progress_at),
            "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
            "problem": self.problem,
            # add_consumer / cancel_consumer / pool_grow / pool_shrink change these at run time
            "queues": list(worker.queue_names),
            "concurrency": worker.pool.concurrency,
        }
        if stopped:
            values.update(stopped_at=now, active=0)
        try:
            if first or not WorkerRow.objects.filter(hostname=worker.hostname).update(**values):
                self._warn_if_taken(WorkerRow)
                values.update(pid=os.getpid(), queues=list(worker.queue_names), pool=worker.pool.name,
                              concurrency=worker.pool.concurrency, version=_version(), started_at=now,
                              broker=mask_url(settings.BROKER_URL)[:255], heartbeat_interval=self.interval,
                              stopped_at=now if stopped else None)
                WorkerRow.objects.update_or_create(hostname=worker.hostname, defaults=values)
            if self._beat_failed:
                logger.info("heartbeat of %s written again", worker.hostname)
            self._beat_failed = False
        except Exception as exc:  # the database is down: keep beating, say so once
            if not self._beat_failed:
                logger.error("could not write the heartbeat of %s (%s: %s); will retry", worker.hostname,
                             type(exc).__name__, exc)
            self._beat_failed = True
        finally:
            connections.close_all()  # never keep an idle connection a server or pooler may drop

    def _warn_if_taken(self, model: Any) -> None:
        other = model.objects.filter(hostname=self.worker.hostname).first()
        if other is not None and other.pid != os.getpid() and other.is_online():
            logger.warning("another worker named %s looks alive (pid %s, heartbeat %s); give each worker its own "
                           "name with -n", other.hostname, other.pid, other.last_heartbeat.isoformat())

    # -- the watchdog --------------------------------------------------
    def check(self) -> None:
        """Diagnose, log a new finding once, clear a finding that went away."""
        found = self.diagnose(time.monotonic())
        if found and found.split()[:2] != self.problem.split()[:2]:  # new, or of another kind
            logger.error("worker %s is stuck: %s", self.worker.hostname, found)
        elif self.problem and not found:
            logger.info("worker %s recovered (was: %s)", self.worker.hostname, self.problem)
        self.problem = found

    def diagnose(self, now: float) -> str:
        """What is wrong now, in words, or ``""``."""
        worker, stats, limit = self.worker, self.stats, self.stuck_after
        if not limit or worker.stopping:  # a warm shutdown waits on tasks: not a stall
            self._suspect_since = None
            return ""
        if stats.broker_error_since is not None:  # reconnecting: the loop waits on purpose
            if now - stats.broker_error_since > limit:
                return f"no broker connection for {now - stats.broker_error_since:.0f}s ({stats.broker_error})"
            return self.problem if self.problem.startswith("queues hold") else ""
        if worker.pool.inline_task is not None:
            return ""  # the solo pool runs a task in the main loop's thread
        # a solo task that just ended kept the loop busy, not stuck, until a moment ago
        alive_at = max(stats.loop_at, worker.pool.inline_ended_at)
        if now - alive_at > limit:
            return f"the main loop has not iterated for {now - alive_at:.0f}s"
        silent = now - stats.received_at
        # jobs held unacked (waiting for a slot or a rate limit) fill the prefetch window: silence is expected
        holding = bool(worker.ready) or bool(len(worker.rate_limits))
        if silent <= limit or holding or self._safely(worker.pool.free_slots, 0) <= 0:
            self._suspect_since = None
            return ""
        return self._silent_consumer(now, silent)

    def _silent_consumer(self, now: float, silent: float) -> str:
        """Free slots and nothing received for long: do the queues hold work?

        Full queues must be seen twice, a few seconds apart, with nothing
        received in between: one look could catch a message on its way in.
        A reconnect is asked for at most once per ``WORKER_STUCK_AFTER``.
        """
        held = self.problem if self.problem.startswith("queues hold") else ""
        confirm = max(self.interval, 2.0)
        every = confirm if self._suspect_since is not None else max(confirm, self.stuck_after / 4)
        if now - self._last_depth_check < every:
            return held  # measured recently: keep what we concluded
        self._last_depth_check = now
        depth = self.depth()
        if not depth:  # empty, or could not measure: nothing to say
            self._suspect_since = None
            return ""
        if self._suspect_since is None or self.stats.received_at > self._suspect_since:
            self._suspect_since = now
            return held
        # a running acks_late task could not be acked on a new connection (it would run twice): wait for it
        if now - self._reconnect_at > self.stuck_after and not self._safely(self.worker.pool.in_flight, 1):
            self._reconnect_at = now
            self.stats.reconnect_requested = True
        return (f"queues hold {depth} message(s) but nothing was received for {silent:.0f}s "
                f"with free pool slots; reconnecting to the broker")

    def depth(self, timeout: float = 10.0) -> int | None:
        """Ready messages in the worker's queues, on a broker connection of our own.

        Runs in a helper thread so a hung broker cannot stop the heartbeat;
        ``None`` when it failed or did not answer within ``timeout``.
        """
        if self._depth_probe is not None and self._depth_probe.is_alive():
            return None  # the last probe still hangs
        box: list[int | None] = [None]

        def probe() -> None:
            try:
                box[0] = self._count()
            except Exception as exc:
                logger.warning("watchdog could not measure the depth of %s (%s: %s)",
                               ", ".join(self.worker.queue_names), type(exc).__name__, exc)

        self._depth_probe = spawn("monitor-depth", probe)  # closes its database connections when done
        self._depth_probe.join(timeout)
        return box[0]

    def _count(self) -> int:
        total = 0
        with new_connection() as connection:
            connection.ensure_connection(max_retries=1)
            for name in self.worker.queue_names:
                with connection.channel() as channel:
                    total += queue_depth(channel, consumer_queue(name, self.worker.hostname))
        return total

    @staticmethod
    def _safely(function: Any, default: Any) -> Any:
        try:
            return function()
        except Exception:  # the pool changed under us (children replaced): next beat reads again
            return default


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["ConsumerStalled", "LoopStats", "Monitor", "queue_depth"]
