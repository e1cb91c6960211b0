"""The worker's watch on revokes: the rows ``revoke()`` writes, read by a background loop.

Revokes are written on the client side (:mod:`django_tasks_q.core.revoking`:
one :class:`~django_tasks_q.models.Revocation` row per task id, nothing
broadcast). Each worker runs a :class:`RevocationWatch`: it loads every live
row before the worker consumes its first message, then its loop
(:class:`~.loops.Loop` ``revocations``, with its own database connection)
reads the rows created since, about every second, so the worker's main loop
only does a set lookup per message. The loop also stops running tasks whose
revoke asks for ``terminate`` -- it keeps working while a ``solo`` task
blocks the main thread -- and prunes expired rows.
The window, stated plainly: a revoke reaches a running worker within about
one poll interval; a task that starts inside that window runs (and is
terminated if the revoke asked for it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from signal import Signals
from typing import Any, NamedTuple

from django.utils import timezone

from .. import signals
from ..core.registry import registry
from ..core.revoking import parse_signal, revoke
from ..loops import Loop

logger = logging.getLogger(__name__)


def send_task_revoked(task_name: str, request: Any, *, terminated: bool = False, signum: int | None = None,
                      expired: bool = False) -> None:
    """The ``task_revoked`` signal, as Celery sends it; a receiver's error is logged, never raised."""
    signals.send(signals.task_revoked, sender=registry.get(task_name), request=request, terminated=terminated,
                 signum=signum, expired=expired)


class _Entry(NamedTuple):
    expires: float  # epoch seconds
    created: datetime
    terminate: bool
    signal: str


class RevocationWatch:
    """The worker's copy of the live revokes, kept fresh by a daemon thread.

    ``is_revoked()`` is a dictionary lookup, safe from any thread. ``pool``
    only needs ``terminate(task_id, signum) -> bool``.
    """

    #: seconds between polls for new revokes
    interval = 1.0
    #: each poll re-reads rows created this long before the newest one seen, so a row
    #: committed late or stamped by a host whose clock lags is not missed
    overlap = 60.0
    #: a full reload this often drops expired and deleted ids and catches anything else
    resync_every = 300.0
    #: expired rows are deleted at start and this often
    prune_every = 300.0

    def __init__(self, pool: Any, hostname: str = ""):
        self.pool = pool
        self.hostname = hostname
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._newest: datetime | None = None
        self._next_resync = 0.0
        self._next_prune = 0.0
        self.loop = Loop("revocations", self.poll, lambda: self.interval, what="read revoked task ids")

    @property
    def _thread(self) -> threading.Thread | None:
        return self.loop.thread

    # -- main-thread side ---------------------------------------------
    def is_revoked(self, task_id: str) -> bool:
        entry = self._entries.get(task_id)
        return entry is not None and entry.expires > time.time()

    def revoked_ids(self) -> list[str]:
        """The ids revoked now, as this worker knows them (remote control ``revoked``)."""
        now = time.time()
        return [task_id for task_id, entry in list(self._entries.items()) if entry.expires > now]

    def terminate_signal(self, task_id: str) -> str | None:
        """The signal a revoke of this running task asked for, or ``None`` (not revoked, or no terminate)."""
        entry = self._entries.get(task_id)
        return entry.signal if entry is not None and entry.terminate and entry.expires > time.time() else None

    def check_started(self, task_id: str) -> None:
        """Called right after a task is handed to the pool: closes the gap between the
        receipt check and the start, in which a terminate revoke could have been missed."""
        name = self.terminate_signal(task_id)
        if name is not None:
            self._terminate(task_id, name)

    def load(self) -> None:
        """Read the live revokes now, in the caller's thread (the worker's, before its first message).

        A failure is logged and the loop's outage begins: its first poll that works says so.
        """
        try:
            self.poll()
        except Exception:
            logger.exception("could not load revoked task ids; retrying every %.0fs", self.interval)
            self.loop.failing = True

    def start(self) -> None:
        """Load the live revokes now (before the first message), then poll in the loop's thread."""
        self.load()
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def poll(self) -> None:
        """One round: new rows (or all of them, now and then), then pruning when due."""
        from ..models import Revocation

        now = timezone.now()
        columns = ("task_id", "expires_at", "created_at", "terminate", "signal")
        rows = Revocation.objects.filter(expires_at__gt=now)
        newest = self._newest
        full = time.monotonic() >= self._next_resync or newest is None
        if newest is not None and not full:
            rows = rows.filter(created_at__gte=newest - timedelta(seconds=self.overlap))
        self._apply(rows.values_list(*columns), full)
        if full:
            self._next_resync = time.monotonic() + self.resync_every
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self.prune_every
            removed, _ = Revocation.objects.filter(expires_at__lte=now).delete()
            if removed:
                logger.info("pruned %d expired revocation(s)", removed)

    def _apply(self, rows: Iterable[tuple], full: bool) -> None:
        first_load = self._newest is None
        fresh = {}
        stop = []
        for task_id, expires_at, created_at, terminate, signal in rows:
            entry = _Entry(expires_at.timestamp(), created_at, terminate, signal)
            known = self._entries.get(task_id)
            if known is None or known.created != created_at:
                if not first_load:
                    logger.info("revoke received for task %s%s", task_id, " (terminate)" if terminate else "")
                if terminate and not first_load:
                    stop.append((task_id, signal))
            fresh[task_id] = entry
            if self._newest is None or created_at > self._newest:
                self._newest = created_at
        with self._lock:
            self._entries = fresh if full else {**self._entries, **fresh}
        if self._newest is None:  # nothing revoked yet: new rows are the ones from now on
            self._newest = timezone.now()
        for task_id, signal in stop:
            self._terminate(task_id, signal)

    def _terminate(self, task_id: str, signal_name: str) -> None:
        try:
            signum = parse_signal(signal_name)
        except ValueError:
            logger.error("revoke of %s asks for unknown signal %r; using SIGTERM", task_id, signal_name)
            signum = Signals.SIGTERM
        try:
            stopped = self.pool.terminate(task_id, signum)
        except Exception:
            logger.exception("could not terminate task %s", task_id)
            return
        if stopped:  # the pool records it REVOKED and sends task_revoked(terminated=True)
            logger.warning("terminated task %s with %s: it was revoked while running", task_id, signum.name)


__all__ = ["RevocationWatch", "parse_signal", "revoke", "send_task_revoked"]
