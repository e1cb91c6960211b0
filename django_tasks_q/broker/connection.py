"""Broker connections for publishing: one per thread, reopened after fork.

Publishing is on the hot path of every ``delay()``, so the kombu connection
and producer are made once per thread and reused; a forked child (prefork
worker, gunicorn) gets fresh ones, never its parent's socket.
"""

from __future__ import annotations

import os
import threading

from kombu import Connection, Producer

from ..conf import settings
from ..extras import broker_extra, require
from ..masking import mask_url  # re-exported: callers import it from here

_local = threading.local()
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


def new_connection(url: str | None = None) -> Connection:
    """A kombu connection to the configured broker with bounded connect time."""
    from .transport.django import register

    register()  # the django:// scheme
    url = url or settings.BROKER_URL
    extra = broker_extra(url)
    if extra is not None:  # a web process never ran the system checks: name the missing package here too
        require(extra, mask_url(url.split(";", 1)[0]))
    options = dict(settings.BROKER_TRANSPORT_OPTIONS or {})
    if url.split("://", 1)[0] in AMQP_SCHEMES:
        # A publish returns once RabbitMQ has the message on disk: without confirms a
        # persistent message it still buffered is lost if the node crashes.
        options.setdefault("confirm_publish", True)
    connection = Connection(url, connect_timeout=settings.BROKER_CONNECTION_TIMEOUT, transport_options=options)
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss"):
        from .transport.redis import Transport as RedisTransport

        connection.transport_cls = RedisTransport  # kombu's, minus per-message client set-up
    elif scheme in AMQP_SCHEMES:
        from .transport import amqp

        # kombu's py-amqp transport, reading the socket ahead
        connection.transport_cls = amqp.SecureTransport if scheme == "amqps" else amqp.Transport
    return connection


class PublishState:
    """What one thread keeps between publishes: connection, producer, declared queues."""

    def __init__(self, url: str):
        self.url = url
        self.pid = os.getpid()
        self.connection = new_connection(url)
        self.producer = Producer(self.connection, auto_declare=False)
        #: queue names declared on this connection: declaring again on every publish
        #: would cost kombu a binding copy (and AMQP a round trip) per message
        self.declared: set[str] = set()
        self.retry_policy = {"max_retries": settings.BROKER_PUBLISH_RETRIES, "interval_start": 0,
                             "interval_step": 0.2, "interval_max": 1.0}

    def release(self) -> None:
        self.connection.release()


def current() -> PublishState:
    """This thread's publish state for the configured broker (created on first use)."""
    state = getattr(_local, "state", None)
    url = settings.BROKER_URL
    if state is None or state.url != url or state.pid != os.getpid():
        if state is not None and state.pid == os.getpid():
            state.release()
        state = _local.state = PublishState(url)
    return state


def reset() -> None:
    """Forget this thread's connection (after fork, or in tests after a broker restart)."""
    _local.state = None


os.register_at_fork(after_in_child=reset)
