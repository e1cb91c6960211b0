"""Reading values off the wire, shared by the message (:mod:`.protocol`) and its signature
(:mod:`.message_signing`): headers' datetimes, and the short ``repr`` that error messages and
``argsrepr`` quote (a hostile message can hold anything, so nothing is quoted whole)."""

from __future__ import annotations

import reprlib
from datetime import datetime, timezone
from typing import Any

from ..exceptions import InvalidMessage

#: ``repr`` cut short: what error messages quote of a value, and what ``argsrepr`` and ``kwargsrepr`` hold.
short_repr = reprlib.Repr()
short_repr.maxstring = short_repr.maxother = 256
short_repr.maxlevel = 3
short_repr.maxlist = short_repr.maxtuple = short_repr.maxdict = 20


def parse_datetime(value: Any, header: str) -> datetime | None:
    """Read an ISO 8601 header; naive values are UTC as Celery writes them."""
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidMessage(f"header {header!r} is not an ISO 8601 datetime: {short_repr.repr(value)}") from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    try:
        parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:00-14:00 is past the last datetime in UTC
        raise InvalidMessage(f"header {header!r} is out of range: {value!r}") from None
    return parsed
