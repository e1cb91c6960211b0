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


def bulk_strings(*parts: str | bytes | int | float) -> bytes:
    """``parts`` as consecutive RESP bulk strings: a command's arguments without its count (for a command
    written in pieces)."""
    return b"".join(bulk_string(part if isinstance(part, bytes) else str(part).encode()) for part in parts)


def resp(*parts: str | bytes | int | float) -> bytes:
    """One Redis command as RESP bytes (what redis-py's packer makes, without its per-call machinery)."""
    return b"*%d\r\n" % len(parts) + bulk_strings(*parts)


def resp_many(commands: list[tuple[str | bytes | int | float, ...]]) -> bytes:
    """Several commands in one write."""
    return b"".join(resp(*command) for command in commands)
