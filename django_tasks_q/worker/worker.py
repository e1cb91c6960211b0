"""``Worker``: consume named queues and run their tasks in a pool.

The main thread owns the broker connection: it receives messages, holds
``eta`` tasks in a timer heap, hands ready jobs to the pool when a slot is
free, and acks -- on hand-over by default, after completion with
``acks_late``. Prefetch is bounded (concurrency x multiplier, plus held eta
tasks). Signal handlers only set flags. The loop survives any error: a lost
broker connection is re-established with back-off, a bad message is refused.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import socket
import time
from collections import deque
from datetime import timedelta
from functools import partial
from typing import Any

from django.utils import timezone
from kombu import Consumer
from kombu.exceptions import OperationalError

from .. import signals
from ..broker.connection import mask_url, new_connection
from ..broker.queues import consumer_queue, describe_queue
from ..conf import settings
from ..core.registry import registry
from ..core.states import TaskState
from ..exceptions import ImproperlyConfigured, TaskRevokedError
from ..results.backend import describe_exception, get_backend
from . import intake
from .executor import make_request
from .pools import create_pool
from .pools.base import Job

logger = logging.getLogger(__name__)
VERSION = "0.1.0"


def expand_hostname(name: str | None) -> str:
    host = socket.gethostname()
    if not name:
        return f"tasksq@{host}"
    return name.replace("%h", host).replace("%n", host.split(".")[0])


class Worker:
    def __init__(self, queues: list[str] | None = None, concurrency: int | None = None, pool: str = "prefork",
                 hostname: str | None = None, prefetch_multiplier: int | None = None,
                 max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None):
        self.queue_names = list(queues or [settings.DEFAULT_QUEUE])
        self.hostname = expand_hostname(hostname)
        self.pool = create_pool(pool, concurrency or (os.cpu_count() or 1), self.hostname,
                                max_tasks_per_child=max_tasks_per_child, max_memory_per_child=max_memory_per_child)
        multiplier = settings.PREFETCH_MULTIPLIER if prefetch_multiplier is None else prefetch_multiplier
        self.prefetch = max(1, self.pool.concurrency * multiplier)
        self.ready: deque[Job] = deque()
        self.timers: list[tuple[float, int, Job]] = []  # (eta as epoch seconds, seq, job)
        self._seq = itertools.count()
        self._channel: Any = None
        self._qos_size = 0
        self.stopping = False
        self.cold = False
        self.backend = get_backend()
        # read once: nothing per message goes through the settings object
        self.intake_policy = intake.Policy.from_settings()
        self.track_started = settings.TRACK_STARTED
        self._next_cleanup = 0.0
        self._periodic: list[list[Any]] = []  # [next run (monotonic), interval, function]
        self._connection_errors: tuple[type[BaseException], ...] = ()

    def every(self, seconds: float, function: Any) -> None:
        """Run ``function()`` in the main loop about every ``seconds``; an error is logged, never raised."""
        self._periodic.append([0.0, seconds, function])

    def _run_periodic(self) -> None:
        now = time.monotonic()
        for entry in self._periodic:
            if entry[0] <= now:
                entry[0] = now + entry[1]
                try:
                    entry[2]()
                except Exception:
                    logger.exception("periodic %s failed; will run again", getattr(entry[2], "__name__", entry[2]))

    # -- life cycle ----------------------------------------------------
    def banner(self) -> str:
        tasks = "\n".join(f"    . {name}" for name in registry.names()) or "    (none)"
        return (
            f"\n -------------- {self.hostname} v{VERSION}\n"
            f" broker:      {mask_url(settings.BROKER_URL)}\n"
            f" results:     {mask_url(str(settings.RESULT_BACKEND))}\n"
            f" queues:      {', '.join(self.queue_names)}\n"
            f" pool:        {self.pool.name} (concurrency {self.pool.concurrency}, prefetch {self.prefetch})\n"
            f" pid:         {os.getpid()}\n"
            f" tasks:\n{tasks}\n"
        )

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopping:
            self.cold = True
            if self.pool.name == "solo":  # the task runs in this very thread: interrupt it
                raise SystemExit(1)
            return
        self.stopping = True

    def run(self) -> None:
        print(self.banner(), flush=True)
        self.pool.start()
        delay = 1.0
        try:
            signals.worker_ready.send(sender=self)
            while not self.stopping:
                try:
                    self._serve()
                    delay = 1.0
                except ImproperlyConfigured:
                    raise
                except Exception as exc:  # connection lost or broker refused: back off, reconnect
                    if self.stopping:
                        break
                    if isinstance(exc, (OSError, OperationalError, *self._connection_errors)):
                        logger.error("broker connection lost (%s: %s); reconnecting in %.0fs",
                                     type(exc).__name__, exc, delay)
                    else:
                        logger.exception("worker loop error; restarting the consumer in %.0fs", delay)
                    self._forget_unacked()
                    self._sleep(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            self._shutdown()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))

    def _serve(self) -> None:
        with new_connection() as connection:
            self._connection_errors = connection.connection_errors + connection.channel_errors
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            self._channel = channel
            self._qos_size = 0
            self._update_qos()
            consumers = [Consumer(channel, [consumer_queue(name, self.hostname)],
                                  on_message=partial(self._on_message, name),
                                  accept=settings.ACCEPT_CONTENT, no_ack=False, auto_declare=False)
                         for name in self.queue_names]
            for name, consumer in zip(self.queue_names, consumers):
                try:
                    consumer.declare()
                except connection.channel_errors as exc:  # not transient: retrying cannot fix it
                    raise ImproperlyConfigured(
                        f"the broker refused queue {name!r} as declared here ({describe_queue(consumer.queues[0])}): "
                        f"{exc}; fix the Queue row or TASKS_Q['QUEUES'], or delete the old declaration") from exc
                consumer.consume()
            logger.info("%s ready: consuming %s from %s", self.hostname, ", ".join(self.queue_names),
                        mask_url(settings.BROKER_URL))
            try:
                while not self.stopping:
                    self._tick()
                    self._drain(connection)
                self._warm_stop(consumers)
            finally:
                self._channel = None

    # -- the loop ------------------------------------------------------
    def _tick(self) -> None:
        """One pass: due timers to ready, ready jobs to the pool, finished jobs acked."""
        now = time.time()
        while self.timers and self.timers[0][0] <= now:
            self.ready.append(heapq.heappop(self.timers)[2])
            self._update_qos()
        while self.ready and self.pool.free_slots() > 0 and not self.stopping:
            self._start(self.ready.popleft())
            for job, outcome in self.pool.poll(0):
                self._finish(job, outcome)
        for job, outcome in self.pool.poll(0):
            self._finish(job, outcome)
        if now >= self._next_cleanup:
            self._cleanup_results()
        self._run_periodic()

    def _drain(self, connection: Any) -> None:
        if self.ready:  # every slot is busy (else _tick would have started it)
            for job, outcome in self.pool.poll(0.05):  # wait on the pool, not the broker
                self._finish(job, outcome)
            return
        timeout = 0.02 if self.pool.in_flight() else 1.0
        if self.timers:
            timeout = max(0.0, min(timeout, self.timers[0][0] - time.time()))
        try:
            connection.drain_events(timeout=timeout or 0.001)
        except socket.timeout:
            pass

    def _on_message(self, queue: str, kombu_message: Any) -> None:
        job = intake.read(kombu_message, queue, self.intake_policy)
        if job is None:
            return
        logger.debug("received task %s[%s]", job.message.task, job.message.id)
        eta = job.message.eta
        delayed = eta is not None and eta > timezone.now()
        # RECEIVED is written only for a task that will wait (eta, or every slot busy):
        # one that starts at once gets its receipt date with the STARTED write.
        waits = delayed or bool(self.ready) or self.pool.free_slots() == 0
        if waits and self.track_started and not job.message.ignore_result:
            self._record(job, TaskState.RECEIVED)
        if delayed:
            heapq.heappush(self.timers, (eta.timestamp(), next(self._seq), job))
            self._update_qos()
        else:
            self.ready.append(job)

    def _update_qos(self) -> None:
        """Held eta tasks must not use up the prefetch window (as Celery does)."""
        size = self.prefetch + len(self.timers)
        if self._channel is not None and size != self._qos_size:
            self._channel.basic_qos(0, size, False)
            self._qos_size = size

    def _start(self, job: Job) -> None:
        expires = job.message.expires
        if expires is not None and expires <= timezone.now():
            logger.warning("task %s[%s] expired at %s; revoked without running", job.message.task,
                           job.message.id, expires.isoformat())
            self._record(job, TaskState.REVOKED, describe_exception(TaskRevokedError(f"expired at {expires.isoformat()}")))
            self._ack(job)
            return
        if not job.acks_late:
            self._ack(job)
        self.pool.apply(job)

    def _finish(self, job: Job, outcome: Any) -> None:
        if not job.acks_late:
            return
        if outcome.requeue:
            self._settle(job, lambda m: m.reject(requeue=True))
        else:
            self._ack(job)

    def _ack(self, job: Job) -> None:
        self._settle(job, lambda m: m.ack())

    def _settle(self, job: Job, action: Any) -> None:
        message = job.kombu_message
        if message is None or message.acknowledged:
            return
        if message.channel is not self._channel:
            # delivered on a connection that has since been lost: the broker re-delivers it
            return
        action(message)

    def _record(self, job: Job, state: str, result: Any = None) -> None:
        try:
            request = make_request(job.message, job.delivery_info, self.hostname)
            self.backend.mark(job.message.id, state, result=result, request=request, task_name=job.message.task)
        except Exception:
            logger.exception("could not record %s for %s", state, job.message.id)

    def _cleanup_results(self) -> None:
        expires = settings.RESULT_EXPIRES
        self._next_cleanup = time.time() + max(1.0, min(3600.0, (expires or 3600) / 2))
        if not expires:
            return
        try:
            removed = self.backend.cleanup(timezone.now() - timedelta(seconds=expires))
            if removed:
                logger.info("removed %d results older than %ss", removed, expires)
        except Exception:
            logger.exception("result cleanup failed; will try again")

    # -- stopping ------------------------------------------------------
    def _warm_stop(self, consumers: list[Consumer]) -> None:
        """Stop taking work, finish running tasks, give unstarted ones back."""
        logger.info("warm shutdown: waiting for %d running task(s)", self.pool.in_flight())
        for consumer in consumers:
            try:
                consumer.cancel()
            except Exception:
                logger.exception("could not cancel consumer")
        while self.pool.in_flight() and not self.cold:
            for job, outcome in self.pool.poll(0.1):
                self._finish(job, outcome)
        for job in list(self.ready) + [entry[2] for entry in self.timers]:
            self._settle(job, lambda m: m.reject(requeue=True))
        self.ready.clear()
        self.timers.clear()

    def _forget_unacked(self) -> None:
        """After a lost connection the broker redelivers what we held; drop our copies."""
        self.ready.clear()
        self.timers.clear()

    def _shutdown(self) -> None:
        self.pool.stop(wait=not self.cold)
        signals.worker_shutdown.send(sender=self)
        logger.info("%s stopped", self.hostname)
