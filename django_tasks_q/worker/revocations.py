"""Revokes that outlast workers: writing them, and the worker's watch on them.

``revoke()`` (behind ``AsyncResult.revoke()`` and ``manage.py taskcontrol
revoke``) stores one :class:`~django_tasks_q.models.Revocation` row per task
id, kept for ``REVOKE_EXPIRES`` seconds, and marks a result that is not ready
yet REVOKED. Nothing is broadcast: a row in the database is what makes a
revoke survive the restart of every worker, and a worker that starts later
still sees it.

Each worker runs a :class:`RevocationWatch`: it loads every live row before
the worker consumes its first message, then a daemon thread (with its own
database connection) reads the rows created since, about every second, so
the worker's main loop only does a set lookup per message. The thread also
stops running tasks whose revoke asks for ``terminate`` -- it keeps working
while a ``solo`` task blocks the main thread -- and prunes expired rows.
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

from django.db import connections
from django.utils import timezone

from .. import signals
from ..conf import settings
from ..core.registry import registry
from ..core.states import TaskState
from ..exceptions import TaskRevokedError
from ..results.backend import describe_exception, get_backend

logger = logging.getLogger(__name__)


def parse_signal(value: str | int) -> Signals:
    """``"SIGKILL"``, ``"KILL"``, ``"kill"`` or ``9`` -> ``Signals.SIGKILL``; anything else is a clear error."""
    text = str(value).strip().upper()
    try:
        if text.isdigit():
            return Signals(int(text))
        return Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        known = ", ".join(s.name for s in (Signals.SIGTERM, Signals.SIGKILL, Signals.SIGINT, Signals.SIGQUIT,
                                              Signals.SIGUSR1))
        raise ValueError(f"unknown signal {value!r} for revoke(terminate=True); use a name such as {known}") from None


def revoke(task_ids: Iterable[str], *, terminate: bool = False, signal: str | int = "SIGTERM",
           reason: str = "") -> list[Any]:
    """Store a revoke for each id and mark its result REVOKED unless it is already ready.

    Re-revoking an id refreshes its row (and its expiry); ``terminate`` then
    reaches workers as a new revoke would.
    """
    from ..models import Revocation

    signum = parse_signal(signal)
    ids = [str(task_id) for task_id in task_ids]
    if not ids or not all(ids):
        raise ValueError(f"revoke needs one or more task ids, got {ids!r}")
    now = timezone.now()
    expires_at = now + timedelta(seconds=settings.REVOKE_EXPIRES)
    rows = []
    for task_id in ids:
        row, _ = Revocation.objects.update_or_create(
            task_id=task_id,
            defaults={"terminate": terminate, "signal": signum.name, "reason": reason[:255],
                      "created_at": now, "expires_at": expires_at})
        rows.append(row)
        _mark_revoked(task_id)
    return rows


def _mark_revoked(task_id: str) -> None:
    backend = get_backend()
    meta = backend.meta(task_id)
    if meta is not None and meta.ready:  # SUCCESS and FAILURE are facts; a revoke does not rewrite them
        return
    backend.mark(task_id, TaskState.REVOKED, result=describe_exception(TaskRevokedError("revoked")),
                 task_name=meta.task_name if meta is not None else "")


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._newest: datetime | None = None
        self._next_resync = 0.0
        self._next_prune = 0.0
        self._failing = False

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

    def start(self) -> None:
        """Load the live revokes now (before the first message), then poll in a thread."""
        try:
            self.poll()
        except Exception:
            logger.exception("could not load revoked task ids; retrying every %.0fs", self.interval)
            self._failing = True
        self._thread = threading.Thread(target=self._run, name="revocations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    # -- the thread ----------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.poll()
                    if self._failing:
                        logger.info("revoked task ids are read again")
                    self._failing = False
                except Exception:
                    if not self._failing:  # one line per outage, not one per second
                        logger.exception("could not read revoked task ids; retrying every %.0fs", self.interval)
                    self._failing = True
                    connections.close_all()
        finally:
            connections.close_all()  # this thread's own connection

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
