"""Crontabs in words, for the admin and logs: "At 07:30 on Monday (Asia/Shanghai)".

Only the shapes people write most are put into words; anything else is shown
as the raw fields in cron order ("cron 5 4 * 1-3 2,4 (Europe/London)"), which
is never wrong, rather than as a sentence that might be. Fields are assumed
valid (``Crontab`` validates them before calling this).
"""

from __future__ import annotations

import re

__all__ = ["describe_crontab"]

_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_NUMBER = re.compile(r"^\d+$")
_EVERY_N = re.compile(r"^\*/(\d+)$")


def _day(token: str) -> str | None:
    """The day named by "1", "mon" or "7" (0 and 7 are Sunday); None for anything else."""
    if _NUMBER.match(token):
        return _DAY_NAMES[int(token) % 7] if int(token) <= 7 else None
    return next((name for name in _DAY_NAMES if name[:3].lower() == token), None)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _days_of_week(field: str) -> str | None:
    """Days in words, e.g. "mon-fri" -> "Monday through Friday"; "1,3,5" -> "Monday, Wednesday and Friday"."""
    if "-" in field and "," not in field and "/" not in field:
        first, _, last = field.partition("-")
        names = [_day(first), _day(last)]
        return None if None in names else f"{names[0]} through {names[1]}"
    tokens = field.split(",")
    known = [name for name in map(_day, tokens) if name is not None]
    return _join(known) if len(known) == len(tokens) else None


def _every(count: str, unit: str) -> str:
    return f"every {unit}" if int(count) == 1 else f"every {int(count)} {unit}s"


def _time(minute: str, hour: str) -> str | None:
    """The time-of-day part, or None if it is not a common shape."""
    if minute == "*" and hour == "*":
        return "Every minute"
    every = _EVERY_N.match(minute)
    if every and hour == "*":
        return _every(every.group(1), "minute").capitalize()
    if not _NUMBER.match(minute):
        return None
    if hour == "*":
        return f"At minute {int(minute)} past every hour"
    every = _EVERY_N.match(hour)
    if every:
        return f"At minute {int(minute)} past {_every(every.group(1), 'hour')}"
    hours = hour.split(",")
    if all(_NUMBER.match(h) for h in hours):
        return "At " + _join([f"{int(h):02d}:{int(minute):02d}" for h in hours])
    return None


def _days(day_of_week: str, day_of_month: str, month_of_year: str) -> str | None:
    """The which-days part ("" for every day), or None if it is not a common shape."""
    if month_of_year != "*":
        return None
    if day_of_week == "*" and day_of_month == "*":
        return ""
    if day_of_month == "*":
        names = _days_of_week(day_of_week)
        return None if names is None else f" on {names}"
    if day_of_week == "*" and _NUMBER.match(day_of_month):
        return f" on day {int(day_of_month)} of the month"
    return None


def describe_crontab(minute: str, hour: str, day_of_week: str, day_of_month: str,
                     month_of_year: str, timezone: str) -> str:
    """One line for a crontab; its zone always shown, since the times are that zone's wall clock."""
    fields = [str(value).strip().lower() for value in (minute, hour, day_of_week, day_of_month, month_of_year)]
    minute, hour, day_of_week, day_of_month, month_of_year = fields
    when, days = _time(minute, hour), _days(day_of_week, day_of_month, month_of_year)
    if when is None or days is None:
        return f"cron {minute} {hour} {day_of_month} {month_of_year} {day_of_week} ({timezone})"
    return f"{when}{days} ({timezone})"
