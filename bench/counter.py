"""The ``incr`` task's one small real operation, shared by every system's ``incr`` task: one Redis ``INCR``.

The counter lives on a private redis-server of its own (``BENCH_COUNTER_URL``),
not the broker's, so that the task's work does not queue behind the broker's
commands. Each process keeps one client: a forked child (prefork, Huey's
``-k process``) opens its own on its first task instead of sharing its
parent's socket.
"""

from __future__ import annotations

import os

KEY = "bench:counter"

_client = None
_pid = 0


def incr() -> int:
    """``INCR`` the counter on ``BENCH_COUNTER_URL``; the new value (stored as the task's result)."""
    global _client, _pid
    if _pid != os.getpid():
        import redis

        _client, _pid = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"]), os.getpid()
    return _client.incr(KEY)


def read(url: str) -> int:
    """The counter's value now (0 when it was never incremented)."""
    import redis

    return int(redis.Redis.from_url(url).get(KEY) or 0)
