"""Fleet-wide rate limits: ``@task(rate_limit="10/s")`` holds across every worker.

The limit spaces out task *starts*, GCRA style (the generic cell rate
algorithm, with no burst): each rate-limited task name has one shared value,
the time of its next free start slot. A worker about to start such a task
reserves the slot ``max(next slot, now)`` and moves the shared value on by
one interval (``1 / rate`` seconds) in a single atomic step, then holds the
job -- unacked, so it still counts against the prefetch window and goes back
to the queue if the worker stops -- until its slot comes. Slots are handed
out in the order workers ask for them, so ten workers with ``"10/s"`` start
about one task every 100 ms between them, not ten.

Where the shared value lives:

* ``redis://`` / ``rediss://`` brokers: a Redis key per task
  (``tasksq:ratelimit:<task name>``), updated by one Lua script that reads
  Redis's own clock, so the workers' clocks need not agree.
* every other broker (``django://``, ``amqp://``...): a
  :class:`~django_tasks_q.models.RateLimitBucket` row per task, moved on by
  a compare-and-set ``UPDATE`` (works on SQLite and PostgreSQL); the slot is
  epoch time on the reserving worker's clock, so hosts need NTP-synced clocks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from typing import Any, Callable, Protocol

from ..conf import settings
from ..core.options import parse_rate_limit
from ..core.registry import registry
from ..lua import load_script
from .pools.base import Job

logger = logging.getLogger(__name__)

#: a wait shorter than this starts the task at once
NEGLIGIBLE_WAIT = 0.001


def gcra(next_slot: float, now: float, interval: float) -> tuple[float, float]:
    """Reserve one start slot: ``(the slot, the new next free slot)``.

    No burst: an idle task does not bank slots, so after a pause the next
    start is ``now`` and the one after it ``now + interval``.
    """
    slot = max(next_slot, now)
    return slot, slot + interval


class SlotStore(Protocol):
    def reserve(self, key: str, interval: float) -> float:
        """Reserve the next start slot of ``key``; return the seconds to wait for it (>= 0)."""


class StoreContention(RuntimeError):
    """The compare-and-set lost too many races in a row."""


class OrmStore:
    """Slots in ``RateLimitBucket`` rows: read, then compare-and-set, until it wins.

    ``UPDATE ... SET next_slot_at = new WHERE key = k AND next_slot_at = old``
    changes the row only if nobody moved it since it was read; a lost race
    reads again. Floats round-trip exactly through SQLite REAL and PostgreSQL
    double precision, so the equality is safe.
    """

    attempts = 100

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock

    def _read(self, key: str) -> float | None:
        from ..models import RateLimitBucket

        return RateLimitBucket.objects.filter(key=key).values_list("next_slot_at", flat=True).first()

    def reserve(self, key: str, interval: float) -> float:
        from ..models import RateLimitBucket

        for _ in range(self.attempts):
            current = self._read(key)
            if current is None:  # first use of this task name anywhere: create the row, then race for it
                RateLimitBucket.objects.bulk_create([RateLimitBucket(key=key, next_slot_at=0.0)],
                                                    ignore_conflicts=True)
                continue
            now = self.clock()
            slot, following = gcra(current, now, interval)
            if RateLimitBucket.objects.filter(key=key, next_slot_at=current).update(next_slot_at=following):
                return max(0.0, slot - now)
        raise StoreContention(f"could not reserve a rate-limit slot for {key!r}: "
                              f"lost {self.attempts} compare-and-set races in a row")


#: A Redis bucket outlives its last slot by this long (the script's ``${KEEP_AFTER_MS}``).
KEEP_AFTER_MS = 60_000
_RESERVE_LUA = load_script(__name__, "reserve_slot.lua", KEEP_AFTER_MS=KEEP_AFTER_MS)


class RedisStore:
    """Slots in Redis keys, reserved by one Lua script on Redis's clock.

    The key expires a minute after its last slot, so idle tasks leave
    nothing behind. The result is returned as a string: Redis truncates Lua
    numbers to integers.
    """

    prefix = "tasksq:ratelimit:"

    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url)
        self._script = self.client.register_script(_RESERVE_LUA)

    def reserve(self, key: str, interval: float) -> float:
        return max(0.0, float(self._script(keys=[self.prefix + key], args=[repr(interval)])))


def store_from_settings() -> SlotStore:
    url = str(settings.BROKER_URL or "")
    if url.split("://", 1)[0] in ("redis", "rediss"):
        return RedisStore(url)
    return OrmStore()


class RateLimiter:
    """The worker's side: reserve a slot per rate-limited job and hold the job until then.

    Used from the worker's main thread only. ``hold(job)`` is asked right
    before a job would start; ``due(now)`` gives back held jobs whose slot
    has come, which then pass ``hold`` without reserving again.
    """

    #: seconds before a job whose slot could not be reserved (store down) is tried again
    retry_after_error = 1.0

    def __init__(self, store_factory: Callable[[], SlotStore] = store_from_settings,
                 clock: Callable[[], float] = time.time):
        self._store_factory = store_factory
        self._store: SlotStore | None = None
        self.clock = clock
        self._intervals: dict[str, float | None] = {}
        self._held: list[tuple[float, int, Job]] = []  # (start at, epoch seconds; seq; job)
        self._seq = itertools.count()
        self._cleared: weakref.WeakSet[Job] = weakref.WeakSet()  # jobs whose slot has come
        self._lock = threading.Lock()

    def interval(self, task_name: str) -> float | None:
        """Seconds between starts of ``task_name`` across the fleet, or ``None`` when unlimited."""
        if task_name not in self._intervals:
            task = registry.get(task_name)
            rate = parse_rate_limit(task.options.rate_limit) if task is not None else None
            self._intervals[task_name] = 1.0 / rate if rate else None  # "0/s" means no limit, as in Celery
        return self._intervals[task_name]

    @property
    def store(self) -> SlotStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def hold(self, job: Job) -> bool:
        """``True``: the job must wait for its slot and is now held here; ``False``: start it now."""
        if job in self._cleared:
            self._cleared.discard(job)
            return False
        interval = self.interval(job.message.task)
        if interval is None:
            return False
        try:
            wait = self.store.reserve(job.message.task, interval)
        except Exception as exc:
            wait = self.retry_after_error
            logger.error("could not reserve a rate-limit slot for %s[%s] (%s: %s); trying again in %.0fs",
                         job.message.task, job.message.id, type(exc).__name__, exc, wait)
            self._push(self.clock() + wait, job, cleared=False)
            return True
        if wait < NEGLIGIBLE_WAIT:
            return False
        logger.debug("rate limit: %s[%s] waits %.3fs for its slot", job.message.task, job.message.id, wait)
        self._push(self.clock() + wait, job, cleared=True)
        return True

    def _push(self, at: float, job: Job, cleared: bool) -> None:
        with self._lock:
            heapq.heappush(self._held, (at, next(self._seq), job))
            if cleared:
                self._cleared.add(job)

    def due(self, now: float | None = None) -> list[Job]:
        """Held jobs whose slot has come, in slot order."""
        now = self.clock() if now is None else now
        released = []
        with self._lock:
            while self._held and self._held[0][0] <= now:
                released.append(heapq.heappop(self._held)[2])
        return released

    def next_due(self) -> float | None:
        """Epoch seconds of the earliest held slot, for the loop's wake-up."""
        return self._held[0][0] if self._held else None

    def cap_timeout(self, timeout: float) -> float:
        """``timeout`` shortened so the loop wakes for the next held slot."""
        first = self.next_due()
        return timeout if first is None else max(0.0, min(timeout, first - self.clock()))

    def take_all(self) -> list[Job]:
        """Every held job, forgotten here (warm shutdown gives them back, a lost connection drops them)."""
        with self._lock:
            jobs = [entry[2] for entry in sorted(self._held)]
            self._held.clear()
        return jobs

    def __len__(self) -> int:
        return len(self._held)

    def held_jobs(self) -> list[Job]:
        """The jobs waiting for their slot, in slot order: a copy, safe to take from any thread."""
        with self._lock:
            return [entry[2] for entry in sorted(self._held)]

    def override(self, task_name: str, per_second: float | None) -> None:
        """This worker's limit for ``task_name`` from now on (remote control ``rate_limit``); ``None``: none."""
        self._intervals[task_name] = 1.0 / per_second if per_second else None

    def info(self) -> dict[str, Any]:
        return {"held": len(self._held)}
