"""``crontab(...)`` for ``TASKS_Q["BEAT_SCHEDULE"]`` in a settings file.

Settings are read before Django is set up, so this module imports nothing
from Django or the rest of the package: ``crontab()`` only records the
fields. They are validated (errors naming the field) when beat syncs the
schedule into rows, and a missing timezone becomes ``TASKS_Q["TIMEZONE"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CrontabEntry:
    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    timezone: str | None = None


def crontab(minute: Any = "*", hour: Any = "*", day_of_week: Any = "*", day_of_month: Any = "*",
            month_of_year: Any = "*", timezone: str | None = None) -> CrontabEntry:
    """Celery's ``crontab(minute=30, hour=7, day_of_week=1)``; values may be ints or cron strings."""
    return CrontabEntry(str(minute), str(hour), str(day_of_week), str(day_of_month), str(month_of_year), timezone)
