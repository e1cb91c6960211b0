"""The loop behind ``manage.py taskevents``: receive workers' events, record them, show them.

One kombu consumer on a queue of its own, bound to the ``celeryev``
exchange with routing key ``#`` (declared as the workers declare it: topic
on RabbitMQ, fanout on Redis -- see :mod:`django_tasks_q.worker.events`).
The queue is exclusive and auto-deleted, non-durable: events are
transient, as in Celery, and nothing piles up for a receiver that is gone.
Messages are taken without acks (``no_ack``). On ``django://``, which
enforces neither, the queue is deleted on a clean stop and bound again
every ``REBIND_EVERY`` seconds; publishers delete a bound queue that left an
event unread for a minute (:func:`django_tasks_q.worker.events.django_listeners`),
so a killed ``taskevents`` leaves no queue filling up for long.

Each event goes to an :class:`~django_tasks_q.eventstore.EventRecorder`
(unless ``store=False``), which writes a batch every ``freq`` seconds and
prunes every ``PRUNE_EVERY``; and, unless ``show=False``, one line per
event is printed: time, type, ``task.name[id]``, worker, runtime or
exception.

A lost broker connection is retried with back-off (1 s doubling to 30 s),
as the worker does; events published meanwhile are lost (transient), the
ones already received are still written. SIGTERM/SIGINT only set a flag:
the loop ends within a quarter second, writes what it holds and returns.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any, TextIO

from django.db import connections
from django.utils import timezone
from kombu import Consumer, Queue

from .broker.connection import mask_url, new_connection
from .conf import settings
from .eventstore import EventRecorder, TaskNames, prune
from .worker.events import exchange_for

logger = logging.getLogger(__name__)

#: seconds between two prunings of the tables
PRUNE_EVERY = 60.0
#: the longest wait for a message, so signals and batch writes are acted on
TICK = 0.25
#: django:// only: seconds between two declarations of the queue and its binding
REBIND_EVERY = 10.0
#: events a line shows the heartbeat of only at verbosity 2
QUIET_TYPES = frozenset({"worker-heartbeat"})


def describe(event: dict[str, Any], name: str = "") -> str:
    """One line of the live view for ``event`` (``name``: the task name when the event lacks it)."""
    kind = str(event.get("type", "?"))
    stamp: Any = event.get("timestamp")  # None or junk: float() raises, caught below
    try:
        at = timezone.localtime(datetime.fromtimestamp(float(stamp), tz=dt_timezone.utc)).strftime("%H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        at = "--:--:--"
    host = str(event.get("hostname", ""))
    if not kind.startswith("task-"):
        extra = f"active={event.get('active')} processed={event['processed']}" if "processed" in event else ""
        return f"{at} {kind:<16} {host} {extra}".rstrip()
    subject = f"{event.get('name') or name or '?'}[{event.get('uuid', '?')}]"
    if kind == "task-succeeded" and isinstance(event.get("runtime"), (int, float)):
        detail = f"{event['runtime']:.3f}s"
    elif kind in ("task-failed", "task-retried"):
        detail = str(event.get("exception", ""))
    elif kind == "task-received" and event.get("args") is not None:
        detail = f"args={event.get('args')} kwargs={event.get('kwargs')}"
    elif kind == "task-revoked":
        detail = "expired" if event.get("expired") else ("terminated" if event.get("terminated") else "")
    else:
        detail = ""
    return f"{at} {kind:<16} {subject} {host} {detail}".rstrip()


class EventReceiver:
    """Consume ``celeryev``, record and print each event; see the module docstring."""

    def __init__(self, *, store: bool = True, show: bool = True, freq: float = 1.0, verbosity: int = 1,
                 out: TextIO | None = None, url: str | None = None):
        if freq <= 0:
            raise ValueError(f"freq must be a positive number of seconds, got {freq!r}")
        self.url = url or settings.BROKER_URL
        self.store, self.show, self.freq, self.verbosity = store, show, float(freq), verbosity
        self.out = out or sys.stdout
        self.names = TaskNames()
        self.recorder = EventRecorder(names=self.names, broker=self.url) if store else None
        self.queue_name = f"taskevents.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.stopping = False
        self.received = 0
        self._flush_at = 0.0
        self._prune_at = 0.0
        self._connected = False

    # -- life cycle --------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> None:
        """Receive until stopped; reconnect with back-off; write what is held before returning."""
        delay = 1.0
        try:
            while not self.stopping:
                try:
                    self._serve()
                    delay = 1.0
                except Exception as exc:
                    if self.stopping:
                        break
                    if self._connected:  # it had connected: a new outage backs off from 1 s again
                        self._connected, delay = False, 1.0
                    logger.error("taskevents lost its broker connection (%s: %s); reconnecting in %.0fs",
                                 type(exc).__name__, exc, delay)
                    self._wait(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            self.housekeeping(force=True)
            connections.close_all()
            dropped = self.recorder.dropped if self.recorder else 0
            logger.info("taskevents stopped: %d event(s) received%s", self.received,
                        f", {dropped} dropped" if dropped else "")

    def _wait(self, seconds: float) -> None:
        """Sleep through an outage, still writing what was received before it."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(TICK, max(deadline - time.monotonic(), 0)))
            self.housekeeping()

    def _serve(self) -> None:
        with new_connection(self.url) as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            queue = Queue(self.queue_name, exchange=exchange_for(connection), routing_key="#",
                          durable=False, auto_delete=True, exclusive=True)
            consumer = Consumer(channel, [queue], callbacks=[self.on_message], no_ack=True, accept=["json"])
            consumer.consume()
            embedded = connection.transport.driver_type == "django"
            bound_at = time.monotonic()
            self._connected = True
            logger.info("taskevents ready: receiving events from %s (%s)", mask_url(self.url),
                        ", ".join(part for part, on in (("storing", self.store), ("showing", self.show)) if on))
            while not self.stopping:
                try:
                    connection.drain_events(timeout=TICK)
                except socket.timeout:
                    pass
                self.housekeeping()
                if embedded and time.monotonic() - bound_at >= REBIND_EVERY:
                    bound_at = time.monotonic()
                    # a publisher may have taken us for dead: bind again
                    consumer.queues[0].declare()  # type: ignore[index, unused-ignore]  # kombu types queues as None (5.7+)
            try:
                consumer.cancel()
                if embedded:  # nothing deletes it there: do it now
                    consumer.queues[0].delete()  # type: ignore[index, unused-ignore]  # kombu types queues as None (5.7+)
            except Exception:  # the queue goes with the connection anyway
                logger.debug("could not remove the event queue", exc_info=True)

    # -- per event -----------------------------------------------------------
    def on_message(self, body: Any, message: Any) -> None:
        """kombu callback: one event, or a list of them (Celery's grouped events)."""
        for event in body if isinstance(body, list) else [body]:
            try:
                self.handle(event)
            except Exception:  # one odd event must not cost the connection (and the events behind it)
                logger.exception("could not handle event %r", event if not isinstance(event, dict) else
                                 event.get("type"))

    def handle(self, event: Any) -> None:
        self.received += 1
        if self.recorder is not None:
            self.recorder.add(event)
        elif isinstance(event, dict):
            self.names.learn(event)
        if self.show and isinstance(event, dict) and (self.verbosity > 1 or event.get("type") not in QUIET_TYPES):
            name = self.names.get(str(event.get("uuid") or ""))
            self.out.write(describe(event, name) + "\n")
            self.out.flush()

    def housekeeping(self, force: bool = False) -> None:
        """Write the batch every ``freq`` seconds and prune every ``PRUNE_EVERY`` (both: ``force``)."""
        if self.recorder is None:
            return
        now = time.monotonic()
        if force or now >= self._flush_at:
            self._flush_at = now + self.freq
            self.recorder.flush()
            if not connections["default"].in_atomic_block:
                connections["default"].close_if_unusable_or_obsolete()
        if force or now >= self._prune_at:
            self._prune_at = now + PRUNE_EVERY
            try:
                removed = prune()
            except Exception as exc:  # the database is away; the next round prunes
                logger.warning("could not prune monitoring data (%s: %s)", type(exc).__name__, exc)
            else:
                if any(removed.values()):
                    logger.info("pruned %d event row(s) and %d activity row(s)", removed["events"],
                                removed["activity"])


__all__ = ["EventReceiver", "describe"]
