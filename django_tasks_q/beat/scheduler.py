"""``Scheduler``: the loop behind ``manage.py taskbeat`` and ``taskworker --beat``.

Each tick (at least every ``poll_interval`` seconds, default 1) reads, through
the due-time index (``next_run_at``, migration 0002), the periodic tasks that
are due and those not planned yet; database triggers empty a task's
``next_run_at`` when it is edited by any means (the admin, ``QuerySet.update()``,
raw SQL), so an edit shows up on the next tick with no signal involved. A task
planned again is compared with the schedule it was last counted from (its
fingerprint: :mod:`.entries`). Due runs are claimed (compare-and-set on
``last_run_at``) and sent through the normal calling path, and every task read
gets its next run time stored. Then it sleeps until the next due time, capped by
``poll_interval``. On a database without the triggers every tick reads every
task instead. Only the lease holder sends. ``stop()`` (SIGTERM, SIGINT) is seen
between two rows of a tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import close_old_connections, connections, router, transaction
from django.db.models import Min, QuerySet
from django.utils import timezone

from .. import signals
from ..core.calling import send
from ..models import PeriodicTask
from . import entries
from .lock import Lease

logger = logging.getLogger(__name__)
#: Rows a tick reads at a time: between two reads, and between two rows, it sees a request to stop.
TICK_CHUNK = 500
#: Tasks a check plans at most (after a bulk insert of many): the rest wait for the next checks, which send
#: what came due first, so a large insert does not hold back runs that are due.
PLAN_PER_CHECK = 5000
#: The databases whose triggers keep the due-time index (migration 0002); on others every check reads every task.
INDEXED_VENDORS = ("sqlite", "postgresql")
#: ``next_run_at`` of a task that never runs again (expired, a clocked task that ran): past every real time.
NEVER = datetime(9999, 12, 31, tzinfo=dt_timezone.utc)
ENABLED = PeriodicTask.objects.filter(enabled=True)


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
        sent: list[str] = []
        indexed = connections[router.db_for_write(PeriodicTask)].vendor in INDEXED_VENDORS
        next_due = self._check_indexed(now, sent) if indexed else self._check_all(now, sent)
        if self.stop_event.is_set():  # asked to stop: the rest is the next leader's (run() releases the lease)
            return 0.0
        signals.send(signals.beat_tick, sender=self, due=sent)
        if next_due is None:
            return self.poll_interval
        return max(0.01, min(self.poll_interval, (next_due - timezone.now()).total_seconds()))

    def _check_indexed(self, now: datetime, sent: list[str]) -> datetime | None:
        """The due-time index (migration 0002): the tasks due by ``now``, then those not planned yet (new, or
        changed: the triggers emptied their ``next_run_at``); each gets its next run time stored. Returns the
        earliest stored one."""
        unplanned = ENABLED.filter(next_run_at__isnull=True)
        alias = router.db_for_write(PeriodicTask)
        for rows, budget in ((ENABLED.filter(next_run_at__lte=now), None), (unplanned, PLAN_PER_CHECK)):
            for chunk in self._chunks(rows, now):
                plans: dict[tuple[datetime, int], list[int]] = {}
                for task, (due, tried) in zip(chunk, self._check(chunk, now, sent)):
                    if not tried:  # a run claimed changed last_run_at: the trigger emptied the plan; planned anew
                        plans.setdefault((due or NEVER, task.plan_version), []).append(task.pk)
                # one UPDATE per distinct time, each only where no edit came since the read (plan_version)
                with transaction.atomic(using=alias):
                    for (due, version), pks in plans.items():
                        PeriodicTask.objects.filter(pk__in=pks, plan_version=version).update(next_run_at=due)
                if budget is not None:
                    budget -= len(chunk)
                    if budget <= 0 and unplanned.exists():
                        return now  # more to plan: check again at once, sending what came due meanwhile first
        earliest = ENABLED.filter(next_run_at__isnull=False).aggregate(Min("next_run_at"))["next_run_at__min"]
        return None if earliest is None or earliest >= NEVER else earliest

    def _check_all(self, now: datetime, sent: list[str]) -> datetime | None:
        """Without the index's triggers: every enabled task, every check. Returns the earliest next run."""
        dues = (due for chunk in self._chunks(ENABLED, now) for due, _ in self._check(chunk, now, sent))
        return min((due for due in dues if due is not None), default=None)

    def _check(self, chunk: list[PeriodicTask], now: datetime,
               sent: list[str]) -> Iterator[tuple[datetime | None, bool]]:
        """Send each task of ``chunk`` that is due by ``now``; yield each one's next run time (None: never) and
        whether a run of it was tried (claimed, or found claimed by another beat)."""
        for task in chunk:
            if self.stop_event.is_set():
                return
            due = entries.next_run_at(task, now)
            if due is None or due > now:
                yield due, False
                continue
            if self._run(task, due, now):
                sent.append(task.name)
            yield entries.next_run_at(task, now), True

    def _chunks(self, rows: QuerySet[PeriodicTask], now: datetime) -> Iterator[list[PeriodicTask]]:
        """``rows`` with their schedules, :data:`TICK_CHUNK` at a time by primary key (not a server-side cursor,
        which PgBouncer's transaction pooling does not allow), each chunk's new and edited schedules counted
        from ``now`` first (:meth:`_rebase_changed`)."""
        rows = rows.select_related("interval", "crontab", "clocked", "solar")
        last = None
        while not self.stop_event.is_set():
            chunk = list((rows if last is None else rows.filter(pk__gt=last)).order_by("pk")[:TICK_CHUNK])
            self._rebase_changed(chunk, now)
            yield chunk
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
                task.schedule_fingerprint, task.baseline_at = digest, now
                changed.setdefault(digest, []).append(task)
        with transaction.atomic(using=router.db_for_write(PeriodicTask)):
            for digest, group in changed.items():
                PeriodicTask.objects.filter(pk__in=[task.pk for task in group]).update(
                    schedule_fingerprint=digest, baseline_at=now)
        for group in changed.values():
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
