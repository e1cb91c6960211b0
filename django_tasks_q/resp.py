"""Redis commands as RESP bytes, for the hot paths that write them to a connection themselves.

redis-py's packer checks and encodes every argument through several calls;
the broker's takes and acks and the result backend's writes run once or
twice per task, where that was a measurable part of a task's CPU. Used by
:mod:`django_tasks_q.broker.transport` and :mod:`django_tasks_q.results.redis`.
"""

from __future__ import annotations


def bulk_string(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def resp(*parts: str | bytes | int | float) -> bytes:
    """One Redis command as RESP bytes (what redis-py's packer makes, without its per-call machinery)."""
    encoded = [part if isinstance(part, bytes) else str(part).encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(bulk_string(part) for part in encoded)
