"""``Worker``: consume named queues and run their tasks in a pool.

The main thread owns the broker connection: it receives messages, holds
``eta`` tasks in a timer heap, hands ready jobs to the pool when a slot is
free, and acks -- on hand-over by default, after completion with
``acks_late``. Prefetch is bounded (concurrency x multiplier, plus held eta
tasks). Signal handlers only set flags. The loop survives any error: a lost
broker connection is re-established with back-off, a bad message is refused.

Beside it, the threads of :meth:`Worker.background_loops` (loops.py),
started and stopped in one place, :meth:`Worker.run`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import socket
import time
from collections import Counter, deque
from datetime import timedelta
from functools import partial
from typing import Any

from django.utils import timezone
from kombu import Consumer
from kombu.exceptions import OperationalError

from .. import signals
from ..broker import delayed
from ..broker.connection import mask_url, new_connection
from ..conf import settings
from ..core.context import Request
from ..core.states import TaskState
from ..exceptions import ImproperlyConfigured, TaskRevokedError
from ..loops import Loop
from ..results.backend import get_backend
from . import deadletter, intake
from .banner import banner
from .consumers import ConsumerSet
from .deliveries import OneAtATime
from .events import EventDispatcher
from .handoff import Handoff
from .limit_overrides import LimitOverrides
from .lost_acks import StartedUnacked, already_done
from .monitor import LoopStats, Monitor
from .parking import Parking
from .pools import create_pool
from .pools.base import Job
from .ratelimit import RateLimiter
from .remote_control import RemoteControl
from .revocations import RevocationWatch
from .revoked import record_revoked

logger = logging.getLogger(__name__)


def expand_hostname(name: str | None) -> str:
    host = socket.gethostname()
    if not name:
        return f"tasksq@{host}"
    return name.replace("%h", host).replace("%n", host.split(".")[0])


class Worker:
    def __init__(self, queues: list[str] | None = None, concurrency: int | None = None, pool: str = "prefork",
                 hostname: str | None = None, prefetch_multiplier: int | None = None,
                 max_tasks_per_child: int | None = None, max_memory_per_child: int | None = None,
                 heartbeat: float | None = None, events: bool | None = None):
        self.queue_names = list(queues or [settings.DEFAULT_QUEUE])
        self.hostname = expand_hostname(hostname)
        self.pool = create_pool(pool, concurrency or (os.cpu_count() or 1), self.hostname,
                                max_tasks_per_child=max_tasks_per_child, max_memory_per_child=max_memory_per_child)
        multiplier = settings.PREFETCH_MULTIPLIER if prefetch_multiplier is None else prefetch_multiplier
        self.prefetch_multiplier = multiplier
        self.prefetch = max(1, self.pool.concurrency * multiplier)
        self.ready: deque[Job] = deque()
        self.held: list[tuple[float, int, Job]] = []  # (eta as epoch seconds, seq, job)
        self._seq = itertools.count()
        self._channel: Any = None
        self._consuming = False  # connected and consuming since the last connection error
        self._qos_size = 0
        self.stopping = False
        self.cold = False
        self.stop_signal: str | None = None  # what asked for the shutdown: "SIGTERM", "SIGINT"; None: remote
        self._shutdown_announced = False
        self.stats = LoopStats()  # counters and stamps for the monitor thread (worker/monitor.py)
        self.heartbeat = float(settings.WORKER_HEARTBEAT if heartbeat is None else heartbeat)  # 0: no monitor
        self.backend = get_backend()
        # read once: nothing per message goes through the settings object
        self.intake_policy = intake.Policy.from_settings()
        self.track_started = settings.TRACK_STARTED
        self.eta_hold_max = float(settings.ETA_HOLD_MAX)
        self._next_cleanup = 0.0
        self._periodic: list[list[Any]] = []  # [next run (monotonic), interval, function]
        self.parking = Parking(self.eta_hold_max, self._ack, self.one_at_a_time)
        self.every(1.0, lambda: self.parking.release(self._channel))
        self._loops: list[Loop] = []  # the background loops while run() runs
        self.every(1.0, self._watch_loops)
        self._connection_errors: tuple[type[BaseException], ...] = ()
        self.revocations = RevocationWatch(self.pool, self.hostname)
        self.rate_limits = RateLimiter()
        # monitoring (worker/events.py, worker/remote_control.py): written by this thread only
        self.active: dict[str, tuple[Job, float]] = {}  # running now: (job, epoch seconds started)
        self.totals: Counter[str] = Counter()  # finished tasks by name (`inspect stats`)
        self.events = EventDispatcher(self.hostname, heartbeat=self.heartbeat)
        self.send_events = settings.EVENTS if events is None else events
        self.remote_control = settings.REMOTE_CONTROL
        # run-time changes by control commands (worker/control_actions.py)
        self.handoff = Handoff()  # calls the command thread hands to the main loop
        self.time_limits = LimitOverrides()
        self.consumers: ConsumerSet | None = None  # the task-queue consumers while connected
        self._started_unacked = StartedUnacked()  # a copy of one comes back acked, not run (worker/lost_acks.py)
        self._deliveries = OneAtATime()  # see one_at_a_time()

    def every(self, seconds: float, function: Any) -> None:
        """Run ``function()`` in the main loop about every ``seconds``; an error is logged, never raised."""
        self._periodic.append([0.0, seconds, function])

    def background_loops(self) -> list[Loop]:
        """Every thread this worker runs beside its main loop and its pool, in start (and stop) order.

        * ``revocations`` -- reads new revokes every second, terminates revoked running tasks (worker/revocations.py);
        * ``monitor`` -- the heartbeat row, the watchdog, ``worker-heartbeat`` events, every ``heartbeat``
          seconds; it starts a short-lived ``monitor-depth`` thread to count queued messages (worker/monitor.py);
        * ``remote-control`` -- answers ``celery inspect`` / ``control`` (worker/remote_control.py).

        Not loops of this list, and why: ``events`` publishes the event queue (worker/events.py), started the
        first time events are enabled (possibly at run time) and stopped last, after ``worker-offline``; a
        broker transport's keeper (``django-transport-keeper``, ``redis-transport-keeper``; broker/transport/
        keeper.py, a Loop too) lives and dies with each consuming connection; the pool's own threads.
        """
        loops = [self.revocations.loop]
        if self.heartbeat > 0:
            loops.append(Monitor(self, self.heartbeat).loop)
        if self.remote_control:
            loops.append(RemoteControl(self).loop)
        return loops

    def _watch_loops(self) -> None:
        """A background loop that died (loops.py) stops the worker, warm: its supervisor starts a new one."""
        for loop in self._loops:
            if loop.died is not None and not self.stopping:
                logger.critical("background thread %s died (%s: %s); stopping the worker", loop.name,
                                type(loop.died).__name__, loop.died)
                self.stopping = True

    def send_worker_event(self, kind: str) -> None:
        """``worker-online``, ``worker-heartbeat`` or ``worker-offline`` (worker/events.py); from any thread."""
        self.events.worker_event(kind, active=len(self.active), processed=self.stats.processed)

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
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopping:
            self.cold = True
            if self.pool.name == "solo":  # the task runs in this very thread: interrupt it
                raise SystemExit(1)
            return
        self.stop_signal = signal.Signals(signum).name
        self.stopping = True

    def _announce_shutdown(self) -> None:
        """``worker_shutting_down``, once, as the shutdown begins (before running tasks are waited for)."""
        if not self._shutdown_announced:
            self._shutdown_announced = True
            signals.send(signals.worker_shutting_down, sender=self, sig=self.stop_signal or "remote",
                         how="cold" if self.cold else "warm", exitcode=1 if self.cold else 0)

    def run(self) -> None:
        self._starting()
        self._loops = self.background_loops()
        delay = 1.0
        try:
            if self.send_events:
                self.events.enable()
            self.revocations.load()  # before the first message: a revoked task never slips through
            for loop in self._loops:
                loop.start()
            self._online()
            while not self.stopping:
                try:
                    self._serve()
                    delay = 1.0
                except ImproperlyConfigured:
                    raise
                except Exception as exc:  # connection lost or broker refused: back off, reconnect
                    if self.stopping:
                        break
                    if self._consuming:  # it had connected: a new outage backs off from 1 s again
                        self._consuming, delay = False, 1.0
                    self.stats.connection_failed(exc)
                    if isinstance(exc, (OSError, OperationalError, *self._connection_errors)):
                        logger.error("broker connection lost (%s: %s); reconnecting in %.0fs",
                                     type(exc).__name__, exc, delay)
                    else:
                        logger.exception("worker loop error; restarting the consumer in %.0fs", delay)
                    self._forget_unacked()
                    self._sleep(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            try:
                self._announce_shutdown()
                self._shutdown()  # a warm shutdown's running tasks finish first, revokes and heartbeats still on
            finally:
                for loop in self._loops:
                    loop.stop()  # the monitor writes stopped_at as it ends
                self._offline()

    # what a worker says as it starts and stops; a prefork child (worker/child.py) leaves it to its parent
    def _starting(self) -> None:
        signals.send(signals.worker_init, sender=self)
        print(banner(self), flush=True)
        self.pool.start()

    def _online(self) -> None:
        self.send_worker_event("worker-online")
        signals.send(signals.worker_ready, sender=self)

    def _offline(self) -> None:
        self.send_worker_event("worker-offline")
        self.events.stop()  # publishes what is queued, worker-offline last

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
            intake.guard_channel(channel)  # a payload kombu cannot even build a message from is refused too
            dead = self.intake_policy.dead_letter_queue
            if dead:
                try:
                    deadletter.declare(channel, dead)
                except connection.recoverable_connection_errors:
                    raise  # the broker went away: reconnect, as for any lost connection
                except connection.channel_errors as exc:
                    raise ImproperlyConfigured(f"the broker refused the dead-letter queue {dead!r} "
                                               f"(DEAD_LETTER_QUEUE): {exc}") from exc
            consumers = ConsumerSet(connection, channel, self.hostname, self._task_consumer)
            consumers.start(self.queue_names)
            parked = self.parking.consume_ready(connection, channel)
            logger.info("%s ready: consuming %s from %s", self.hostname, ", ".join(self.queue_names),
                        mask_url(settings.BROKER_URL))
            self._consuming = True
            self.consumers = consumers
            try:
                while not self.stopping:
                    self._tick()
                    self._drain(connection)
                    self.stats.check_reconnect(connection)  # the watchdog found this consumer silent
                self._warm_stop(consumers.all() + parked)
            finally:
                self._channel = None
                self.consumers = None

    def _task_consumer(self, channel: Any, queue: Any, name: str) -> Consumer:
        return Consumer(channel, [queue], on_message=self.one_at_a_time(partial(self._on_message, name)),
                        on_decode_error=self.one_at_a_time(partial(intake.undecodable, name, self.intake_policy)),
                        accept=settings.ACCEPT_CONTENT, no_ack=False, auto_declare=False)

    def one_at_a_time(self, handler: Any) -> Any:
        """``handler`` as a delivery callback that never runs inside another one (worker/deliveries.py)."""
        return self._deliveries.wrap(handler)

    def update_prefetch(self) -> None:
        """After ``pool_grow``/``pool_shrink``: the prefetch window follows the concurrency."""
        self.prefetch = max(1, self.pool.concurrency * self.prefetch_multiplier)
        self._update_qos()

    # -- the loop ------------------------------------------------------
    def _tick(self) -> None:
        """One pass: due held tasks to ready, ready jobs to the pool, finished jobs acked."""
        self.stats.tick()
        self.handoff.run_pending()  # queue and pool changes from control commands
        now = time.time()
        self.ready.extendleft(reversed(self.rate_limits.due(now)))  # rate-limited jobs whose slot came
        while self.held and self.held[0][0] <= now:
            self.ready.append(heapq.heappop(self.held)[2])
            self._update_qos()
        while self.ready and self.pool.free_slots() > 0 and not self.stopping:
            self._start(self.time_limits.apply(self.ready.popleft()))  # limits set by `time_limit`
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
        # idle: wake 4 times a second, so a shutdown signal is acted on within 0.25 s
        timeout = 0.02 if self.pool.in_flight() else 0.25
        if self.held:
            timeout = max(0.0, min(timeout, self.held[0][0] - time.time()))
        timeout = self.rate_limits.cap_timeout(timeout)  # wake for the next rate-limit slot
        try:
            connection.drain_events(timeout=timeout or 0.001)
        except socket.timeout:
            pass
        else:
            self.stats.received()

    def _on_message(self, queue: str, kombu_message: Any) -> None:
        job = intake.read(kombu_message, queue, self.intake_policy)
        if job is None or self._revoked(job) or self._done_before(job):
            return
        logger.debug("received task %s[%s]", job.message.task, job.message.id)
        eta = job.message.eta
        park_until = delayed.deliver_at(eta, self.eta_hold_max)
        if park_until is not None and self.parking.park(job, park_until):
            return
        self.events.task_received(job.message)
        if signals.task_received.receivers:
            signals.send(signals.task_received, sender=self,
                         request=Request.from_message(job.message, job.delivery_info, self.hostname))
        holds_eta = eta is not None and eta > timezone.now()
        # RECEIVED is written only for a task that will wait (eta, or every slot busy):
        # one that starts at once gets its receipt date with the STARTED write.
        if holds_eta or bool(self.ready) or self.pool.free_slots() == 0:
            self._record_waiting(job)
        if holds_eta:  # due within ETA_HOLD_MAX: held here
            heapq.heappush(self.held, (eta.timestamp(), next(self._seq), job))
            self._update_qos()
        else:
            self.ready.append(job)

    def _record_waiting(self, job: Job) -> None:
        """RECEIVED for a task that waits here -- except a retry, whose RETRY (and its cause) stays
        visible until the next attempt starts, as in Celery."""
        if not self.track_started or job.message.ignore_result or job.message.retries:
            return
        try:
            request = Request.from_message(job.message, job.delivery_info, self.hostname)
            self.backend.mark_received(job.message.id, request=request, task_name=job.message.task)
        except Exception:
            logger.exception("could not record %s for %s", TaskState.RECEIVED, job.message.id)

    def _update_qos(self) -> None:
        """Held eta tasks must not use up the prefetch window (as Celery does).

        The window is the channel's, shared by its consumers (``global``, as Celery asks of RabbitMQ):
        RabbitMQ applies a per-consumer window only to consumers started after it, so a window widened
        for a held eta task would not reach the consumer already running -- its one slot stays full.
        """
        size = self.prefetch + len(self.held)
        if self._channel is not None and size != self._qos_size:
            self._channel.basic_qos(0, size, True)
            self._qos_size = size

    def _start(self, job: Job) -> None:
        if self._revoked(job):  # checked again: the revoke may have come while the job waited
            return
        expires = job.message.expires
        if expires is not None and expires <= timezone.now():
            logger.warning("task %s[%s] expired at %s; revoked without running", job.message.task,
                           job.message.id, expires.isoformat())
            self._drop_revoked(job, TaskRevokedError(f"expired at {expires.isoformat()}"), expired=True)
            return
        if self.rate_limits.hold(job):  # held, unacked, until its fleet-wide slot (worker.ratelimit)
            self._record_waiting(job)
            return
        if not job.acks_late:
            try:
                self._ack(job)
            except Exception:
                # The broker may have taken the ack before the connection broke (a Redis killed while
                # it synced its log has applied it and sent no reply): then no copy will come back, so
                # run the task now rather than lose it, and ack the copy that comes back if it does.
                self._started_unacked.remember(job, ack_failed=True)
                self._begin(job)
                raise  # the connection is gone: reconnect
            self._started_unacked.remember(job, ack_failed=False)
        self._begin(job)

    def _begin(self, job: Job) -> None:
        self.active[job.message.id] = (job, time.time())
        self.events.task_started(job.message)
        self.pool.apply(job)
        self.revocations.check_started(job.message.id)

    def _done_before(self, job: Job) -> bool:
        """A copy of a task already started or ended (worker/lost_acks.py): acked, not run twice."""
        why = already_done(self._started_unacked, self.backend, job)
        if why is None:
            return False
        logger.warning("task %s[%s] %s; acked, not run again", job.message.task, job.message.id, why)
        self._ack(job)
        return True

    def _revoked(self, job: Job) -> bool:
        """A revoked task is acked and recorded REVOKED instead of run (worker.revocations)."""
        if not self.revocations.is_revoked(job.message.id):
            return False
        logger.warning("task %s[%s] is revoked: dropped without running", job.message.task, job.message.id)
        self._drop_revoked(job, TaskRevokedError("revoked"))
        return True

    def _drop_revoked(self, job: Job, error: TaskRevokedError, *, expired: bool = False) -> None:
        """Dropped without running: REVOKED, acked, ``task_revoked`` and ``task-revoked`` (worker/revoked.py)."""
        request = Request.from_message(job.message, job.delivery_info, self.hostname)
        record_revoked(self.backend, request, error, expired=expired, settle=partial(self._ack, job),
                       best_effort=True)
        self.events.task_revoked(job.message, expired=expired)

    def _finish(self, job: Job, outcome: Any) -> None:
        self.stats.finished(outcome.state == TaskState.FAILURE)
        self.active.pop(job.message.id, None)
        self.totals[job.message.task] += 1
        self.events.task_finished(job.message, outcome)
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
        self._announce_shutdown()
        logger.info("warm shutdown: waiting for %d running task(s)", self.pool.in_flight())
        for consumer in consumers:
            try:
                consumer.cancel()
            except Exception:
                logger.exception("could not cancel consumer")
        while self.pool.in_flight() and not self.cold:
            for job, outcome in self.pool.poll(0.1):
                self._finish(job, outcome)
        for job in list(self.ready) + [entry[2] for entry in self.held] + self.rate_limits.take_all():
            self._settle(job, lambda m: m.reject(requeue=True))
        self.ready.clear()
        self.held.clear()

    def _forget_unacked(self) -> None:
        """After a lost connection the broker redelivers what we held; drop our copies."""
        self._deliveries.clear()
        self.ready.clear()
        self.rate_limits.take_all()
        self.held.clear()

    def _shutdown(self) -> None:
        self.pool.stop(wait=not self.cold)
        signals.send(signals.worker_shutdown, sender=self)
        logger.info("%s stopped", self.hostname)
