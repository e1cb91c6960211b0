"""Schedules: when a periodic task runs, as pure functions of a given moment.

``Interval``, ``Crontab``, ``Clocked`` and ``Solar`` are frozen values that
answer the scheduler's three questions: ``next_after(moment)``,
``last_at_or_before(moment)`` and ``describe()``. No database, settings or
clock: the caller passes "now" in, so every rule is tested with fixed
datetimes. Moments must be aware (any zone); results are aware UTC. A bad
field raises ``InvalidSchedule``, whose ``field`` and message name it.

Crontab and daylight saving time (part of the public contract)
-------------------------------------------------------------
Crontab fields are wall-clock times in ``timezone``. croniter iterates naive
wall times (its own timezone handling has had DST bugs, so it never sees a
zone), and each wall slot W runs at *the first instant at which the zone's
clock reads W or later*:

- A W that does not exist (spring forward: 01:30 on the last Sunday of March
  in Europe/London, 02:30 on the second Sunday of March in America/New_York)
  runs once, at the instant the clocks jump (London 01:00 UTC = 02:00 BST;
  New York 07:00 UTC = 03:00 EDT). Slots landing on one instant run once
  (London "0 * * * *": 01:00 and 02:00 are both 01:00 UTC that day).
- A W that occurs twice (fall back: 01:30 on the last Sunday of October in
  Europe/London) runs once, at its first occurrence (fold=0); nothing runs
  during the repeated hour.
- Hence an hourly crontab runs once per wall-clock hour label, "*/30" never
  runs twice at the same label, and a daily 07:30 job runs exactly once per
  local day, every day of the year, in every zone.
- Slots are strictly increasing instants: ``next_after(x) > x``,
  ``last_at_or_before(x) <= x`` and ``next_after(last_at_or_before(x)) > x``.

Day of month and day of week combine with AND, as in Celery (cron ORs them):
day_of_month "13" with day_of_week "fri" is Friday the 13th. Fields take
numbers, names ("jan", "mon"), "*", ranges (wrapping: "fri-mon"), steps and
lists; day_of_week 0 and 7 are Sunday; croniter's extensions (L, W, #, H, R,
?) are refused, as Celery has none of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter

from ..exceptions import TasksQError
from .describe import describe_crontab
from .solar import EVENTS, last_event, next_event

__all__ = ["Clocked", "Crontab", "Interval", "InvalidSchedule", "Solar", "crontab_of"]

#: Distinct crontabs (field sets) kept built, and (crontab, moment) answers kept: bounded, so a process with
#: many schedules keeps the ones it uses most.
CRONTAB_CACHE = 4096
SLOT_CACHE = 65536
#: Checked crontab field values kept (one per field name and value), and checked whole expressions (a short
#: string each: enough for every crontab of a site with tens of thousands).
FIELD_CACHE = 4096
EXPRESSION_CACHE = 65536


class InvalidSchedule(TasksQError, ValueError):
    """A schedule field is invalid; ``field`` names it and the message starts with it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


def _utc(moment: datetime) -> datetime:
    """``moment`` as aware UTC; a naive moment is a bug in the caller, not a guess to make."""
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"moment must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


# -- Interval -------------------------------------------------------------------

_PERIOD_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


@dataclass(frozen=True)
class Interval:
    """Every N units of elapsed time, counted from the last run (no fixed grid, no DST)."""

    every: int
    period: str

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every <= 0:
            raise InvalidSchedule("every", f"{self.every!r} is not a whole number > 0")
        if self.period not in _PERIOD_SECONDS:
            raise InvalidSchedule("period", f"{self.period!r} is not one of {', '.join(_PERIOD_SECONDS)}")

    @property
    def seconds(self) -> float:
        return float(self.every * _PERIOD_SECONDS[self.period])

    def next_after(self, moment: datetime) -> datetime:
        return _utc(moment) + timedelta(seconds=self.seconds)

    def last_at_or_before(self, moment: datetime) -> datetime:
        return _utc(moment)

    def describe(self) -> str:
        unit = self.period[:-1]
        return f"every {unit}" if self.every == 1 else f"every {self.every} {self.period}"


# -- Crontab --------------------------------------------------------------------

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# name, position in croniter's "minute hour day_of_month month day_of_week", allowed range, names
_FIELDS = (
    ("minute", 0, "0-59", ()),
    ("hour", 1, "0-23", ()),
    ("day_of_month", 2, "1-31", ()),
    ("month_of_year", 3, "1-12 or jan-dec", _MONTHS),
    ("day_of_week", 4, "0-6 or sun-sat (7 is also Sunday)", _DAYS),
)
_SYNTAX = re.compile(r"^[0-9a-z*/,-]+$")
_SAME_ENDS = re.compile(r"\b(\w+)-\1\b")  # "7-7": croniter reads it as "*"; it means "7"


def _cron_field(name: str, value: object, position: int, allowed: str, names: tuple[str, ...]) -> str:
    """The field as croniter should read it, or InvalidSchedule naming the field."""
    if not isinstance(value, str):
        raise InvalidSchedule(name, f"{value!r} is not a string")
    return _checked_field(name, value, position, allowed, names)


@lru_cache(maxsize=FIELD_CACHE)
def _checked_field(name: str, value: str, position: int, allowed: str, names: tuple[str, ...]) -> str:
    """:func:`_cron_field` of a string, remembered: checking a field with croniter cost more than a crontab's
    every other use, and the same few field values ("0", "*/3", "mon-fri") recur across many crontabs."""
    text = value.strip().lower()
    words = re.findall(r"[a-z]+", text)
    if not _SYNTAX.match(text) or any(word not in names for word in words):
        hint = f"numbers {allowed}, '*', ranges 'a-b', steps '/n' and lists ','"
        raise InvalidSchedule(name, f"{value!r} is not a cron field (use {hint})")
    expression = " ".join(text if index == position else "*" for index in range(5))
    try:
        croniter.expand(expression)
    except CroniterError as exc:
        if "out of range" in str(exc):
            raise InvalidSchedule(name, f"{value!r} is out of range {allowed}") from None
        detail = re.sub(r"^\[.*?\]\s*", "", str(exc))  # drop croniter's echo of the whole expression
        raise InvalidSchedule(name, f"{value!r} is not valid: {detail}") from None
    return _SAME_ENDS.sub(r"\1", text)


@lru_cache(maxsize=EXPRESSION_CACHE)
def _check_expression(expression: str) -> None:
    """Raise CroniterBadDateError if the fields, each valid, never meet (day 31 of February); remembered."""
    croniter(expression, datetime(2000, 1, 1), day_or=False).get_next(datetime)


def _is_zone(name: object) -> bool:
    """An IANA name zoneinfo knows; not "localtime", which is whatever this machine is set to."""
    if not isinstance(name, str) or name == "localtime":
        return False
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # KeyError: ZoneInfoNotFoundError
        return False
    return True


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """What the clock in ``zone`` reads at ``moment``, as a naive datetime."""
    return moment.astimezone(zone).replace(tzinfo=None, fold=0)


def _first_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which the clock in ``zone`` reads ``wall`` or later (see module docstring)."""
    early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # fold=0: the first of two
    if _wall(early, zone) == wall:
        return early
    # ``wall`` is in a gap: the answer is the jump, between the two readings of it.
    late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = math.floor(min(early, late).timestamp()), math.ceil(max(early, late).timestamp())
    while high - low > 1:  # zone transitions fall on whole seconds
        middle = (low + high) // 2
        if _wall(datetime.fromtimestamp(middle, UTC), zone) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


@dataclass(frozen=True)
class Crontab:
    """Wall-clock times in ``timezone``, cron style; DST rules in the module docstring."""

    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    timezone: str = "UTC"
    #: the fields as croniter reads them ("minute hour day_of_month month day_of_week"), derived
    _expression: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expression = " ".join(_cron_field(name, getattr(self, name), position, allowed, names)
                              for name, position, allowed, names in _FIELDS)
        object.__setattr__(self, "_expression", expression)
        if not _is_zone(self.timezone):
            raise InvalidSchedule("timezone", f"{self.timezone!r} is not an IANA zone like 'Europe/London'")
        try:
            _check_expression(self._expression)
        except CroniterBadDateError:
            raise InvalidSchedule("day_of_month", f"{self.day_of_month!r} never falls in month_of_year "
                                  f"{self.month_of_year!r} on day_of_week {self.day_of_week!r}") from None

    @lru_cache(maxsize=SLOT_CACHE)  # keeps its Crontab alive: fine, crontab_of keeps them anyway
    def _next_slot(self, moment: datetime) -> tuple[datetime, datetime]:
        """(wall slot, its instant) of the first slot strictly after ``moment``. Remembered: the tasks on one
        crontab row count from the same moments (the slot they last ran in, the tick that first saw them),
        and croniter's walk was most of a beat check over many such tasks.

        Instants never decrease as wall slots increase, and slots up to the
        wall reading of ``moment`` ran by ``moment``: scan on from that reading
        (in a repeated hour, past slots that ran in its first pass).
        """
        zone = ZoneInfo(self.timezone)
        slots = croniter(self._expression, _wall(moment, zone), day_or=False)
        while True:
            wall = slots.get_next(datetime)
            instant = _first_instant(wall, zone)
            if instant > moment:
                return wall, instant

    def next_after(self, moment: datetime) -> datetime:
        return self._next_slot(_utc(moment))[1]

    def last_at_or_before(self, moment: datetime) -> datetime:
        # The slot before the next one; every earlier slot ran at or before ``moment``.
        wall, _ = self._next_slot(_utc(moment))
        previous = croniter(self._expression, wall, day_or=False).get_prev(datetime)
        return _first_instant(previous, ZoneInfo(self.timezone))

    def next_runs(self, moment: datetime, count: int = 5) -> list[datetime]:
        runs = [self.next_after(moment)]
        while len(runs) < count:
            runs.append(self.next_after(runs[-1]))
        return runs[:count]

    def describe(self) -> str:
        return describe_crontab(self.minute, self.hour, self.day_of_week, self.day_of_month,
                                self.month_of_year, self.timezone)


@lru_cache(maxsize=CRONTAB_CACHE)
def crontab_of(minute: str, hour: str, day_of_week: str, day_of_month: str, month_of_year: str,
               timezone: str) -> Crontab:
    """The ``Crontab`` of these fields, built once per process: building one checks its fields with croniter,
    which cost more than answering a question with it. (A field that is wrong raises each time.)"""
    return Crontab(minute=minute, hour=hour, day_of_week=day_of_week, day_of_month=day_of_month,
                   month_of_year=month_of_year, timezone=timezone)


# -- Clocked --------------------------------------------------------------------

@dataclass(frozen=True)
class Clocked:
    """Once, at ``at``."""

    at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.at, datetime) or self.at.utcoffset() is None:
            raise InvalidSchedule("at", f"{self.at!r} is not a timezone-aware datetime")

    def next_after(self, moment: datetime) -> datetime | None:
        return self.at.astimezone(UTC) if self.at > _utc(moment) else None

    def last_at_or_before(self, moment: datetime) -> datetime | None:
        return self.at.astimezone(UTC) if self.at <= _utc(moment) else None

    def describe(self) -> str:
        zone = getattr(self.at.tzinfo, "key", None) or self.at.tzname()
        shown = self.at.strftime("%Y-%m-%d %H:%M" + (":%S" if self.at.second else ""))
        return f"once at {shown} ({zone})"


# -- Solar ----------------------------------------------------------------------

@dataclass(frozen=True)
class Solar:
    """An event of the sun's daily course at a place (Celery's event names); see ``solar``."""

    event: str
    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise InvalidSchedule("event", f"{self.event!r} is not one of {', '.join(EVENTS)}")
        for name, limit in (("latitude", 90), ("longitude", 180)):
            value = getattr(self, name)  # a Decimal from a DecimalField is welcome: stored as float
            number = float(value) if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool) else None
            if number is None or not -limit <= number <= limit:
                raise InvalidSchedule(name, f"{value!r} is not a number from {-limit} to {limit}")
            object.__setattr__(self, name, number)

    def next_after(self, moment: datetime) -> datetime | None:
        """Skips days without the event (polar day or night); None if none within a year."""
        return next_event(self.event, _utc(moment), self.latitude, self.longitude)

    def last_at_or_before(self, moment: datetime) -> datetime | None:
        return last_event(self.event, _utc(moment), self.latitude, self.longitude)

    def describe(self) -> str:
        kind, _, depth = self.event.partition("_")
        name = f"{depth} {kind}" if kind in ("dawn", "dusk") else self.event.replace("_", " ")
        return f"at {name} ({self.latitude}, {self.longitude})"
