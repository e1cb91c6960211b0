"""Broker connections for publishing: one per thread, reopened after fork.

Publishing is on the hot path of every ``delay()``, so the kombu connection
and producer are made once per thread and reused; a forked child (prefork
worker, gunicorn) gets fresh ones, never its parent's socket.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit, urlunsplit

from kombu import Connection, Producer

from ..conf import settings

_local = threading.local()


def mask_url(url: str) -> str:
    """``redis://:secret@h:6379/0`` -> ``redis://:**@h:6379/0``; passwords never reach logs."""
    if ";" in url:  # a kombu failover list: "sentinel://:pw@h1;sentinel://:pw@h2"
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable broker url>"
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:**@{netloc}"))


def new_connection(url: str | None = None) -> Connection:
    """A kombu connection to the configured broker with bounded connect time."""
    from .transport.django import register

    register()  # the django:// scheme
    timeout = settings.BROKER_CONNECTION_TIMEOUT
    return Connection(
        url or settings.BROKER_URL,
        connect_timeout=timeout,
        transport_options=dict(settings.BROKER_TRANSPORT_OPTIONS or {}),
    )


def producer() -> Producer:
    """This thread's producer on this thread's connection (created on first use)."""
    state = getattr(_local, "state", None)
    url = settings.BROKER_URL
    if state is None or state[0] != url or state[1] != os.getpid():
        if state is not None and state[1] == os.getpid():
            state[2].release()
        connection = new_connection(url)
        state = (url, os.getpid(), connection, Producer(connection, auto_declare=False))
        _local.state = state
    return state[3]


def reset() -> None:
    """Forget this thread's connection (after fork, or in tests after a broker restart)."""
    _local.state = None


os.register_at_fork(after_in_child=reset)
