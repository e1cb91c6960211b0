"""Celery-format events: what Flower, ``celery events`` and event receivers read.

A worker started with ``-E`` (or ``TASKS_Q["EVENTS"] = True``, or told so
at run time by ``celery control enable_events``) publishes one event per
task state change and a heartbeat, in Celery's format, so Celery's own
tools follow our workers as they follow Celery's:

* exchange ``celeryev`` -- topic on RabbitMQ, fanout on Redis (as Celery
  declares it there: kombu's Redis fanout is PUB/SUB, so events nobody
  listens to are not stored); routing key = the event type with ``-`` ->
  ``.`` (``task.succeeded``); JSON; transient; header ``hostname``;
* every event has ``type``, ``hostname``, ``timestamp``, ``utcoffset``,
  ``pid`` and ``clock`` (a Lamport clock, kombu's ``LamportClock``, shared
  with the remote-control mailbox so the two agree on ordering);
* task events carry ``uuid`` and the fields Celery's worker sends for that
  type (see :meth:`EventDispatcher.task_received` and friends); worker
  events carry ``freq``, ``sw_ident``, ``sw_ver``, ``sw_sys``, ``active``,
  ``processed`` and ``loadavg``.

Why a sender thread: the worker's main loop only builds the event (a dict,
its clock value and timestamp taken at the moment of the change) and puts
it on a bounded in-memory queue; a daemon thread with its own broker
connection publishes. A slow or unreachable broker therefore never slows
task consumption, and a failed publish never fails a task or stops the
worker: it is logged (at most once every ``LOG_EVERY`` seconds), the
connection is dropped and made again for the first event after
``RETRY_AFTER`` seconds. Events are transient, as in Celery: those that
cannot be published, come in that pause, or arrive while the queue is full
are dropped and counted in the log.

On ``django://`` every event is a database row, so one is written only
when a queue is bound to ``celeryev`` (a ``manage.py taskevents`` runs):
the sender thread looks at the bindings at most once a second
(:func:`django_listeners`) and, with none, drops events without writing
anything -- no row, no ``Unroutable``. That broker enforces neither
``auto_delete`` nor ``expires``, so a bound queue that has held an event
for ``STALE_AFTER`` seconds is taken for the queue of a receiver that died
and deleted by the publisher (a live ``taskevents`` drains its queue every
second and binds it again every few seconds).
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import reprlib
import threading
import time
from datetime import datetime
from typing import Any, Protocol

from kombu import Exchange, Producer
from kombu.clocks import LamportClock

from ..broker.connection import new_connection
from ..broker.transport.django_bindings import Unroutable
from ..core.states import TaskState

logger = logging.getLogger(__name__)

EXCHANGE_NAME = "celeryev"
SW_IDENT = "django-tasks-q"
#: a failed publish is logged at most this often (seconds)
LOG_EVERY = 10.0
#: events waiting for the sender thread; more are dropped
QUEUE_SIZE = 10000
#: after a failed publish, events are dropped without trying for this long (seconds)
RETRY_AFTER = 2.0
#: django:// only: seconds between two looks at which queues are bound to ``celeryev``
LISTENERS_TTL = 1.0
#: django:// only: a bound queue holding an event this old (seconds) has lost its receiver
STALE_AFTER = 60.0

#: bounded reprs of task arguments, as Celery's argsrepr
ARGS_REPR = reprlib.Repr()
ARGS_REPR.maxstring = ARGS_REPR.maxother = 256
ARGS_REPR.maxlevel = 3
ARGS_REPR.maxlist = ARGS_REPR.maxtuple = ARGS_REPR.maxdict = 20


def utcoffset() -> int:
    """Hours west of UTC, as Celery's ``utcoffset`` (its receivers use it to correct timestamps)."""
    local = time.localtime()
    seconds = time.altzone if time.daylight and local.tm_isdst > 0 else time.timezone
    return seconds // 3600


def software_info() -> dict[str, str]:
    from .. import __version__

    return {"sw_ident": SW_IDENT, "sw_ver": __version__, "sw_sys": platform.system()}


def loadavg() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return []


def exchange_for(connection: Any) -> Exchange:
    """``celeryev`` as Celery declares it on this transport: fanout on Redis, topic elsewhere."""
    kind = "fanout" if connection.transport.driver_type == "redis" else "topic"
    return Exchange(EXCHANGE_NAME, type=kind, durable=True, auto_delete=False, delivery_mode="transient")


def supported(url: str | None = None) -> bool:
    """Every broker carries events; on ``django://`` only while a receiver is bound (module docstring)."""
    return True


def django_listeners(channel: Any, stale_after: float = STALE_AFTER) -> list[str]:
    """The queues bound to ``celeryev`` on a ``django://`` channel whose receivers are alive.

    A bound queue holding a message older than ``stale_after`` seconds is
    deleted (rows and bindings), as RabbitMQ would expire it: its receiver
    is gone and nothing else would ever empty it.
    """
    from datetime import timedelta

    from django.utils import timezone

    from ..models import BrokerBinding, BrokerMessage

    database = getattr(channel, "database", "default")
    queues = set(BrokerBinding.objects.using(database).filter(exchange=EXCHANGE_NAME)
                 .values_list("queue", flat=True))
    if not queues:
        return []
    cutoff = timezone.now() - timedelta(seconds=stale_after)
    stale = set(BrokerMessage.objects.using(database).filter(queue__in=queues, created_at__lt=cutoff)
                .values_list("queue", flat=True).distinct())
    for name in sorted(stale):
        logger.warning("deleting event queue %s: it has not been read for %.0fs (its taskevents is gone)",
                       name, stale_after)
        channel.queue_delete(name)
    return sorted(queues - stale)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Clock(Protocol):
    """A Lamport clock: kombu's ``LamportClock``, or a prefork worker's one for all its processes
    (worker/child_slot.py's ``SharedClock``)."""

    @property
    def value(self) -> int: ...

    def forward(self) -> int: ...


class EventDispatcher:
    """Builds Celery events in the caller's thread and publishes them from its own.

    ``enabled`` may be flipped at any time (``enable_events`` /
    ``disable_events`` remote-control commands); a disabled dispatcher costs
    one attribute check per state change.
    """

    def __init__(self, hostname: str, enabled: bool = False, *, heartbeat: float = 0.0,
                 clock: Clock | None = None, url: str | None = None):
        self.hostname = hostname
        self.clock: Clock = clock or LamportClock()
        self.freq = float(heartbeat)
        self.pid = os.getpid()
        self.url = url
        self.available = supported(url)
        self.enabled = False
        self._queue: queue.Queue[tuple[dict[str, Any], str] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._dropped = 0
        self._logged_at = -1e9
        self._failing = False
        self._listeners_at = -1e9  # django:// only: when the bindings were last read
        self._listening = True
        if enabled:
            self.enable()

    # -- switching -----------------------------------------------------
    def enable(self) -> bool:
        """Turn events on; ``False`` when this broker cannot carry them (``django://``)."""
        if not self.available:
            logger.warning("events are not published on django:// (use a Redis or RabbitMQ broker); "
                           "%s sends none", self.hostname)
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="events", daemon=True)
                self._thread.start()
        self.enabled = True
        return True

    def disable(self) -> None:
        self.enabled = False

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued (``worker-offline`` last), then end the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    # -- building events -----------------------------------------------
    def send(self, type: str, **fields: Any) -> None:
        """Queue one event of ``type`` with Celery's common fields; never raises, never blocks."""
        if not self.enabled:
            return
        event = {"hostname": self.hostname, "utcoffset": utcoffset(), "pid": self.pid,
                 "clock": self.clock.forward(), **fields, "type": type, "timestamp": time.time()}
        try:
            self._queue.put_nowait((event, type.replace("-", ".")))
        except queue.Full:
            self._dropped += 1
            self._complain("event queue full (%d events waiting); dropped %d event(s)", QUEUE_SIZE, self._dropped)

    def task_received(self, message: Any) -> None:
        if self.enabled:
            self.send("task-received", uuid=message.id, name=message.task,
                      args=ARGS_REPR.repr(tuple(message.args)), kwargs=ARGS_REPR.repr(message.kwargs),
                      root_id=message.root_id or message.id, parent_id=message.parent_id,
                      retries=message.retries, eta=_iso(message.eta), expires=_iso(message.expires))

    def task_started(self, message: Any, pid: int | None = None) -> None:
        if self.enabled:
            self.send("task-started", uuid=message.id, pid=pid or self.pid)

    def task_finished(self, message: Any, outcome: Any) -> None:
        """The event for a pool outcome: succeeded, failed, retried, revoked (terminated) or rejected."""
        if not self.enabled:
            return
        state = outcome.state
        if state == TaskState.SUCCESS:
            self.send("task-succeeded", uuid=message.id, result=outcome.describe(), runtime=outcome.runtime)
        elif state == TaskState.FAILURE:
            self.send("task-failed", uuid=message.id, exception=outcome.describe(), traceback=outcome.traceback)
        elif state == TaskState.RETRY:
            self.send("task-retried", uuid=message.id, exception=outcome.describe(), traceback=outcome.traceback)
        elif state == TaskState.REVOKED:
            self.send("task-revoked", uuid=message.id, terminated=True, signum=None, expired=False)
        elif outcome.requeue:  # Reject(requeue=True), or a lost child's acks_late task given back
            self.send("task-rejected", uuid=message.id, requeue=True)

    def task_revoked(self, message: Any, *, expired: bool = False) -> None:
        """Dropped before it ran: revoked, or past ``expires``."""
        if self.enabled:
            self.send("task-revoked", uuid=message.id, terminated=False, signum=None, expired=expired)

    def worker_event(self, type: str, *, active: int, processed: int) -> None:
        """``worker-online``, ``worker-heartbeat`` or ``worker-offline``."""
        if self.enabled:
            self.send(type, freq=self.freq, active=active, processed=processed, loadavg=loadavg(),
                      **software_info())

    # -- the sender thread -----------------------------------------------
    def _run(self) -> None:
        connection: Any = None
        producer: Producer | None = None
        retry_at = 0.0
        while True:
            item = self._queue.get()
            if item is None:
                break
            event, routing_key = item
            if time.monotonic() < retry_at:  # the broker just failed us: do not wait on it for every event
                self._dropped += 1
                continue
            try:
                if producer is None:
                    connection = new_connection(self.url)
                    connection.transport_options["confirm_publish"] = False  # events are transient
                    connection.ensure_connection(max_retries=1)
                    producer = Producer(connection.channel(), exchange=exchange_for(connection), auto_declare=True)
                if connection.transport.driver_type == "django" and not self._anyone_listening(producer.channel):
                    continue  # nobody receives events: write no row
                producer.publish(event, routing_key=routing_key, serializer="json",
                                 headers={"hostname": self.hostname}, retry=False)
                if self._failing:
                    logger.info("events are published again")
                self._failing = False
            except Unroutable:  # django://: the receiver's queue went away since we looked
                self._listeners_at = -1e9
            except Exception as exc:
                self._failing = True
                self._dropped += 1
                self._complain("could not publish event %s (%s: %s); dropped %d event(s) so far",
                               event.get("type"), type(exc).__name__, exc, self._dropped)
                _release(connection)
                connection = producer = None
                retry_at = time.monotonic() + RETRY_AFTER
        _release(connection)

    def _anyone_listening(self, channel: Any) -> bool:
        now = time.monotonic()
        if now - self._listeners_at >= LISTENERS_TTL:
            self._listeners_at = now
            self._listening = bool(django_listeners(channel))
        return self._listening

    def _complain(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            logger.error(text, *args)


def _release(connection: Any) -> None:
    if connection is not None:
        try:
            connection.release()
        except Exception:  # it is being thrown away anyway
            logger.debug("closing the event connection failed", exc_info=True)


__all__ = ["EXCHANGE_NAME", "SW_IDENT", "EventDispatcher", "django_listeners", "exchange_for", "supported",
           "utcoffset"]
