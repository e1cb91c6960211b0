"""``Scheduler``: the loop behind ``manage.py taskbeat`` and ``taskworker --beat``.

Each tick (at least every ``poll_interval`` seconds, default 1) it reads
every periodic task with its schedule in one query. That read is both the
change detection -- an edit made through the admin, ``QuerySet.update()`` or
raw SQL shows up on the next tick, with no signal involved -- and the input
for what is due. Due runs are claimed (compare-and-set on ``last_run_at``)
and sent through the normal calling path. Then it sleeps until the next due
time, capped by ``poll_interval``. Only the lease holder sends. ``stop()``
(SIGTERM, SIGINT) is seen between two rows of a tick, so a long tick over
many schedules does not keep the process alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime

from django.db import close_old_connections, transaction
from django.utils import timezone

from .. import signals
from ..core.calling import send
from ..models import PeriodicTask
from . import entries
from .lock import Lease

logger = logging.getLogger(__name__)
#: Rows a tick reads at a time: between two reads, and between two rows, it sees a request to stop.
TICK_CHUNK = 500


class Scheduler:
    def __init__(self, poll_interval: float = 1.0, lease_ttl: float = 6.0):
        self.poll_interval = poll_interval
        self.lease_ttl = lease_ttl
        self.stop_event = threading.Event()
        self.leading = False

    def run(self) -> None:
        """Tick until ``stop()``; every error is logged and the loop goes on."""
        from .sync import sync_settings_schedule

        sync_settings_schedule()  # a bad BEAT_SCHEDULE raises ImproperlyConfigured naming the entry
        lease = Lease(ttl=self.lease_ttl)
        logger.info("beat started (lease holder %s)", lease.holder)
        signals.send(signals.beat_init, sender=self)
        try:
            while not self.stop_event.is_set():
                try:
                    wait = self.tick(lease, timezone.now())
                except Exception:
                    logger.exception("beat tick failed; retrying")
                    close_old_connections()
                    wait = self.poll_interval
                self.stop_event.wait(wait)
        finally:
            try:
                lease.release()
            except Exception:
                logger.exception("could not release the beat lease")
            logger.info("beat stopped")

    def stop(self) -> None:
        self.stop_event.set()

    def tick(self, lease: Lease, now: datetime) -> float:
        """Send what is due; return how long to sleep."""
        leading = lease.acquire(now)
        if leading != self.leading:
            logger.info("beat %s the lease", "holds" if leading else "does not hold")
            self.leading = leading
        if not leading:
            return self.poll_interval
        next_due = None
        sent: list[str] = []
        for task in self._enabled_tasks(now):
            if self.stop_event.is_set():  # asked to stop: the rest is the next leader's (run() releases the lease)
                return 0.0
            due = entries.next_run_at(task, now)
            if due is None:
                continue
            if due <= now:
                if self._run(task, due, now):
                    sent.append(task.name)
                due = entries.next_run_at(task, now)
            if due is not None and (next_due is None or due < next_due):
                next_due = due
        signals.send(signals.beat_tick, sender=self, due=sent)
        if next_due is None:
            return self.poll_interval
        return max(0.01, min(self.poll_interval, (next_due - timezone.now()).total_seconds()))

    def _enabled_tasks(self, now: datetime) -> Iterator[PeriodicTask]:
        """Every enabled periodic task with its schedule, read :data:`TICK_CHUNK` rows at a time by primary key
        (not a server-side cursor, which PgBouncer's transaction pooling does not allow), each chunk's new and
        edited schedules counted from ``now`` first (:meth:`_rebase_changed`)."""
        rows = PeriodicTask.objects.filter(enabled=True).select_related("interval", "crontab", "clocked", "solar")
        last = None
        while not self.stop_event.is_set():
            chunk = list((rows if last is None else rows.filter(pk__gt=last)).order_by("pk")[:TICK_CHUNK])
            self._rebase_changed(chunk, now)
            yield from chunk
            if len(chunk) < TICK_CHUNK:
                return
            last = chunk[-1].pk

    def _rebase_changed(self, tasks: list[PeriodicTask], now: datetime) -> None:
        """A new or edited schedule counts from now: it does not fire at once. One UPDATE per schedule the
        chunk's changed tasks share (their fingerprint), all in one transaction: a bulk insert of many tasks
        on a few schedules is taken in a few statements, and on many schedules without a commit (a disk
        sync on SQLite) per task."""
        changed: dict[str, list[PeriodicTask]] = {}
        for task in tasks:
            digest = entries.fingerprint(task)
            if digest != task.schedule_fingerprint:
                changed.setdefault(digest, []).append(task)
        with transaction.atomic():
            for digest, group in changed.items():
                PeriodicTask.objects.filter(pk__in=[task.pk for task in group]).update(
                    schedule_fingerprint=digest, baseline_at=now)
        for digest, group in changed.items():
            for task in group:
                task.schedule_fingerprint, task.baseline_at = digest, now
            row = group[0].schedule_row
            described = row.as_schedule().describe() if row else "missing"
            if len(group) == 1:
                logger.info("periodic task %r: schedule is %s; counting from now", group[0].name, described)
            else:
                logger.info("%d periodic tasks (%r, ...): schedule is %s; counting from now", len(group),
                            group[0].name, described)

    def _run(self, task: PeriodicTask, due: datetime, now: datetime) -> bool:
        """Claim and send one due run; True when a task was sent."""
        decision = entries.decide(task, due, now)
        if not entries.claim(task, decision.slot, counted=decision.send):
            task.refresh_from_db()  # another beat sent this run
            return False
        if not decision.send:
            logger.warning("periodic task %r missed its run at %s; skipped (catch_up=none)", task.name,
                           due.isoformat())
            task.last_run_at = decision.slot
            return False
        try:
            result = send(task.task, task.args, task.kwargs, entries.send_options(task))
        except Exception:
            entries.unclaim(task, decision.slot)
            logger.exception("periodic task %r: could not send %s; will retry", task.name, task.task)
            return False
        logger.info("periodic task %r: sent %s[%s] for %s", task.name, task.task, result.id, due.isoformat())
        task.last_run_at = decision.slot
        task.total_run_count += 1
        if task.one_off or task.clocked_id:
            task.enabled = False
        return True
