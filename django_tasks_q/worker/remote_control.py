"""Remote control: answer Celery's ``celery.pidbox`` broadcasts (``celery inspect``, ``celery control``, Flower).

kombu's :class:`~kombu.pidbox.Mailbox` and :class:`~kombu.pidbox.Node` speak
the wire protocol -- fanout exchange ``celery.pidbox``, this worker's queue
``<hostname>.celery.pidbox``, replies to the direct exchange
``reply.celery.pidbox`` under the caller's ticket -- with the queue options
Celery's workers declare (exclusive, 10 s expiry, 300 s message TTL), so the
same clients address our workers and Celery's alike. This module supplies
the handlers, which answer with the shapes Celery's worker replies with
(``ping`` -> ``{"ok": "pong"}``, ``active`` -> a list of request dicts ...).

Why a thread with its own broker connection, not a consumer in the main
loop: the main loop must never wait on a command (``stats`` reads
``getrusage``, ``revoke`` writes a database row), a solo-pool task blocks
the main thread for as long as it runs yet ``inspect active`` should still
show it, and a problem on the control connection must not make the main
loop reconnect and give back the messages it holds. The thread is a
:class:`~.loops.Loop` (``remote-control``) whose one round serves until the
worker stops; a lost connection ends the round, and the loop starts another
with back-off (1 s, doubling up to 30 s). Handlers read the worker's state (``active``,
``ready``, ``held``, rate-limited jobs) by copying containers the
main thread mutates; a copy that races a mutation is simply taken again.
State changes go through what is already thread safe: revokes through the
database (:func:`~django_tasks_q.core.revoking.revoke`, exactly what ``taskcontrol revoke``
does) plus ``pool.terminate``, shutdown by the worker's ``stopping`` flag
(as SIGTERM), rate limits by one dictionary assignment.

Brokers: Redis and RabbitMQ as Celery. On ``django://`` the mailbox works
too (its fanout exchange routes by binding rows), at the cost of one poll of
the worker's pidbox queue per ``polling_interval`` (1 s when idle); the
worker deletes its pidbox queue when it stops, but a killed worker's queue
keeps collecting broadcasts until someone deletes it (``django://`` does
not enforce ``expires``).
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.db import connections
from kombu.pidbox import Mailbox
from kombu.utils.json import dumps

from ..broker.connection import mask_url, new_connection
from ..broker.queues import consumer_queue
from ..compat import accepts_argument
from ..conf import settings
from ..core.options import parse_rate_limit
from ..core.registry import registry
from ..core.revoking import parse_signal, revoke
from ..exceptions import InvalidTaskOptions
from ..loops import Loop
from . import control_signing
from . import events as events_module
from .control_commands import HANDLERS, INSPECT_COMMANDS, Handler, command, nok, ok  # noqa: F401  (re-exported)
from .pools.base import Job

if TYPE_CHECKING:
    from .view import ControlledWorker

logger = logging.getLogger(__name__)

#: the value of ``REMOTE_CONTROL`` that answers inspect commands and refuses the others
READ_ONLY = "read-only"


#: The node queue exclusive and not durable, where kombu takes these options (5.6 and later); kombu 5.5's
#: node queue is auto-deleted, as the Celery 5.5 workers that run on it declare theirs.
NODE_QUEUE_OPTIONS = ({"queue_exclusive": True, "queue_durable": False}
                      if accepts_argument(Mailbox.__init__, "queue_exclusive") else {})


def mailbox() -> control_signing.SigningMailbox:
    """The ``celery`` mailbox with the queue options of Celery 5's workers and clients.

    It signs what it sends once its ``signing_key`` is set (control_signing.py); a worker's node only replies.
    """
    return control_signing.SigningMailbox("celery", type="fanout", accept=["json"], serializer="json", queue_ttl=300.0,
                   reply_queue_ttl=300.0, queue_expires=10.0, reply_queue_expires=10.0, **NODE_QUEUE_OPTIONS)


def _copy(make: Callable[[], list]) -> list:
    """A copy of a container another thread mutates: taken again if the mutation raced it."""
    for _ in range(10):
        try:
            return make()
        except RuntimeError:  # changed size during iteration
            continue
    return []


def _jsonable(value: Any) -> Any:
    try:
        dumps(value)
    except Exception:
        return repr(value)
    return value


def request_info(job: Job, hostname: str, *, time_start: float | None = None, worker_pid: int | None = None,
                 safe: bool | None = None) -> dict[str, Any]:
    """One task as Celery's ``Request.info()``: what ``active``, ``reserved`` and ``scheduled`` list.

    Arguments can hold secrets, so they are left out (``None``) unless asked for with Celery's ``safe``
    flag: ``safe=False`` gives them as sent, ``safe=True`` their reprs (shortened; what Flower asks for).
    """
    message, kombu_message = job.message, job.kombu_message
    if safe is False:
        args, kwargs = _jsonable(list(message.args)), _jsonable(dict(message.kwargs))
    elif safe:
        args, kwargs = events_module.ARGS_REPR.repr(tuple(message.args)), events_module.ARGS_REPR.repr(message.kwargs)
    else:
        args = kwargs = None
    return {
        "id": message.id, "name": message.task, "args": args, "kwargs": kwargs, "type": message.task,
        "hostname": hostname, "time_start": time_start,
        "acknowledged": bool(getattr(kombu_message, "acknowledged", False)),
        "delivery_info": {key: job.delivery_info.get(key) for key in
                          ("exchange", "routing_key", "priority", "redelivered", "queue")},
        "worker_pid": worker_pid,
    }


class RemoteControl:
    """The pidbox node of one :class:`~django_tasks_q.worker.worker.Worker`, served from a daemon thread."""

    def __init__(self, worker: ControlledWorker):
        self.worker = worker
        self.hostname: str = worker.hostname
        self.events: events_module.EventDispatcher = worker.events
        self.mailbox = mailbox()
        self.mailbox.clock = self.events.clock  # one Lamport clock for events and replies
        self.started_at = time.monotonic()
        self.loop = Loop("remote-control", self._serve, 1.0, immediate=True, backoff=30.0, traceback=False,
                         what=f"stay connected to the broker for {self.hostname}")
        self.node: Any = None
        self._idle_db = False
        #: ``REMOTE_CONTROL = "read-only"``: answer inspect commands only
        self.read_only = worker.remote_control == READ_ONLY
        #: what ``pool_grow`` is capped against (``MAX_CONCURRENCY``, else 4 x this)
        self.start_concurrency: int = worker.pool.concurrency
        self._keys = control_signing.keys()
        self._replays = control_signing.ReplayGuard()

    def start(self) -> "RemoteControl":
        self.loop.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.loop.stop(timeout)

    # -- the loop's round: serve until the worker stops ----------------------
    def _serve(self) -> None:
        with new_connection() as connection:
            # each client replies to a queue bound just before it asked: read bindings on every reply
            connection.transport_options["binding_cache_ttl"] = 0
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            self._idle_db = connection.transport.driver_type != "django"  # on django:// it polls all the time
            self.node = self.mailbox(connection).Node(self.hostname, state=self, channel=channel, handlers=HANDLERS)
            consumer = self.node.listen(callback=self._on_message)
            self.loop.recovered()  # connected again, if it was not
            while not self.loop.stopping:
                try:
                    connection.drain_events(timeout=1.0)
                except socket.timeout:
                    pass
            try:
                consumer.cancel()
                if connection.transport.driver_type == "django":  # nothing deletes it there: do it now
                    consumer.queues[0](channel).delete()
            except Exception:
                logger.debug("could not remove the pidbox queue of %s", self.hostname, exc_info=True)

    def _on_message(self, body: Any, message: Any) -> None:
        expires = (message.headers or {}).get("expires") if message is not None else None
        if isinstance(expires, (int, float)) and expires and expires < time.time():
            logger.debug("ignored an expired control command: %r", body)
            return
        if not isinstance(body, dict) or not self._for_me(body):
            return
        try:
            body = self._admitted(body)
            if body is not None:
                self.node.handle_message(body, message)
        except Exception:  # a bad command, or its reply could not be sent: log it, keep listening
            logger.exception("control command %r failed", body.get("method") if isinstance(body, dict) else body)
        finally:
            if self._idle_db:  # commands are rare: keep no idle database connection a server may drop
                connections.close_all()

    def _for_me(self, body: dict[str, Any]) -> bool:
        """Is this worker among the command's destinations (as ``Node.handle_message`` decides)?"""
        destination, pattern, matcher = body.get("destination"), body.get("pattern"), body.get("matcher")
        if destination:
            return self.hostname in destination
        if pattern and matcher:
            from kombu.matcher import match
            return bool(match(self.hostname, pattern, matcher))  # type: ignore[arg-type, unused-ignore]  # typed bytes
        return True

    def _admitted(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The command to run (its signature removed), or None when it is refused (logged, and answered)."""
        method = body.get("method")
        if self._keys:
            why, arguments = control_signing.verify_request(self._keys, body, self._replays)
            if why is not None:
                self._refuse(body, f"refused control command {method!r}: {why} (SIGNING_KEY is set)")
                return None
            body = {**body, "arguments": arguments}
            self.node.handlers = _SealedReplies(self, body.get("ticket"))
        if self.read_only and method not in INSPECT_COMMANDS:
            self._refuse(body, f"refused control command {method!r}: remote control is read-only "
                               f"(REMOTE_CONTROL = {READ_ONLY!r}); inspect commands only")
            return None
        return body

    def _refuse(self, body: dict[str, Any], why: str) -> None:
        logger.warning("%s: %s", self.hostname, why)
        reply_to = body.get("reply_to")
        if isinstance(reply_to, dict):
            answer = nok(why)
            if self._keys and isinstance(self.node.handlers, _SealedReplies):
                answer = control_signing.seal_reply(self._keys[0], self.hostname, body.get("ticket"), answer)
            self.node.reply({self.hostname: answer}, exchange=reply_to.get("exchange"),
                            routing_key=reply_to.get("routing_key"), ticket=body.get("ticket"))

    # -- what handlers read --------------------------------------------
    def worker_pid(self, job: Job) -> int:
        """The process running ``job``: its prefork child, else the worker itself."""
        return self.worker.pool.pid_of(job)

    def active(self) -> list[tuple[Job, float]]:
        return _copy(lambda: list(self.worker.active.values()))

    def reserved(self) -> list[Job]:
        return _copy(lambda: list(self.worker.ready)) + self.worker.rate_limits.held_jobs()

    def scheduled(self) -> list[tuple[float, Job]]:
        return sorted(((eta, job) for eta, _seq, job in _copy(lambda: list(self.worker.held))),
                      key=lambda pair: pair[0])


class _SealedReplies:
    """The handlers of one signed command, each reply sealed for its ticket (control_signing.py)."""

    def __init__(self, control: RemoteControl, ticket: Any):
        self.control, self.ticket = control, ticket

    def __getitem__(self, method: str) -> Handler:
        handler = HANDLERS[method]
        control = self.control

        def sealed(state: Any, **arguments: Any) -> dict[str, str]:
            try:
                value = handler(state, **arguments)
            except Exception as exc:
                logger.exception("control command %r failed", method)
                value = nok(repr(exc))
            return control_signing.seal_reply(control._keys[0], control.hostname, self.ticket, value)
        return sealed


# -- inspect commands ----------------------------------------------------
@command(inspect=True)
def ping(control: RemoteControl, **kwargs: Any) -> dict[str, Any]:
    return ok("pong")


@command(inspect=True)
def clock(control: RemoteControl, **kwargs: Any) -> dict[str, Any]:
    return {"clock": control.events.clock.value}


@command("active", "dump_active", inspect=True)
def active(control: RemoteControl, safe: bool | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [request_info(job, control.hostname, time_start=started, worker_pid=control.worker_pid(job), safe=safe)
            for job, started in control.active()]


@command("reserved", "dump_reserved", inspect=True)
def reserved(control: RemoteControl, safe: bool | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [request_info(job, control.hostname, safe=safe) for job in control.reserved()]


@command("scheduled", "dump_schedule", inspect=True)
def scheduled(control: RemoteControl, safe: bool | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [{"eta": job.message.eta.isoformat() if job.message.eta else None,
             "priority": job.delivery_info.get("priority") or 0,
             "request": request_info(job, control.hostname, safe=safe)}
            for _eta, job in control.scheduled()]


@command("revoked", "dump_revoked", inspect=True)
def revoked(control: RemoteControl, **kwargs: Any) -> list[str]:
    return control.worker.revocations.revoked_ids()


@command("registered", "dump_tasks", inspect=True)
def registered(control: RemoteControl, taskinfoitems: Iterable[str] | None = None, **kwargs: Any) -> list[str]:
    names = []
    for name in sorted(registry.names()):
        limit = getattr(registry[name].options, "rate_limit", None)
        names.append(f"{name} [rate_limit={limit}]" if limit else name)
    return names


@command(inspect=True)
def active_queues(control: RemoteControl, **kwargs: Any) -> list[dict[str, Any]]:
    worker = control.worker
    return [_jsonable(dict(consumer_queue(name, worker.hostname).as_dict(recurse=True)))
            for name in worker.queue_names]


@command(inspect=True)
def stats(control: RemoteControl, **kwargs: Any) -> dict[str, Any]:
    worker, pool = control.worker, control.worker.pool
    return {
        "total": dict(worker.totals),
        "pid": os.getpid(),
        "clock": str(control.events.clock.value),
        "uptime": round(time.monotonic() - control.started_at),
        "pool": {"implementation": f"django_tasks_q.worker.pools:{pool.name}",
                 "max-concurrency": pool.concurrency, "processes": pool.pids(),
                 "max-tasks-per-child": pool.max_tasks_per_child or "N/A",
                 "put-guarded-by-semaphore": False, "timeouts": [0, 0]},
        "broker": _broker_info(),
        "prefetch_count": worker.prefetch + len(worker.held),
        "rusage": _rusage(),
        "sw_ident": events_module.SW_IDENT, "sw_ver": events_module.software_info()["sw_ver"],
    }


@command(inspect=True)
def conf(control: RemoteControl, with_defaults: bool = False, **kwargs: Any) -> dict[str, Any]:
    """A few settings under Celery's names; never a password, a signing key or transport options."""
    worker = control.worker
    return {
        "broker_url": mask_url(str(settings.BROKER_URL)),
        "result_backend": mask_url(str(settings.RESULT_BACKEND)) if settings.RESULT_BACKEND else None,
        "task_default_queue": settings.DEFAULT_QUEUE,
        "task_serializer": settings.TASK_SERIALIZER,
        "accept_content": list(settings.ACCEPT_CONTENT),
        "task_acks_late": settings.ACKS_LATE,
        "task_track_started": settings.TRACK_STARTED,
        "worker_prefetch_multiplier": settings.PREFETCH_MULTIPLIER,
        "worker_concurrency": worker.pool.concurrency,
        "worker_send_task_events": control.events.enabled,
        "task_signing": bool(settings.SIGNING_KEY),
        "timezone": settings.TIMEZONE,
    }


def _broker_info() -> dict[str, Any]:
    connection = new_connection()  # not connected: only its parsed URL is read
    return {"hostname": connection.hostname, "userid": connection.userid, "virtual_host": connection.virtual_host,
            "port": connection.port, "insist": False, "ssl": bool(connection.ssl),
            "transport": connection.transport_cls if isinstance(connection.transport_cls, str)
            else getattr(connection.transport_cls, "__name__", str(connection.transport_cls)),
            "connect_timeout": connection.connect_timeout, "login_method": connection.login_method,
            "uri_prefix": connection.uri_prefix, "heartbeat": connection.heartbeat}


def _rusage() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {name: getattr(usage, "ru_" + name) for name in
            ("utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap", "inblock",
             "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw")}


# -- control commands ----------------------------------------------------
@command("revoke")
def revoke_tasks(control: RemoteControl, task_id: str | list[str] | None = None, terminate: bool = False,
            signal: str | int | None = None, **kwargs: Any) -> dict[str, Any]:
    """As ``taskcontrol revoke``: a stored revoke every worker honours; ``terminate`` also stops it here now."""
    ids = [task_id] if isinstance(task_id, str) else [str(i) for i in task_id or ()]
    try:
        signum = parse_signal(signal or "SIGTERM")
        revoke(ids, terminate=bool(terminate), signal=signum.name, reason=f"remote control to {control.hostname}")
    except ValueError as exc:
        return nok(str(exc))
    logger.info("tasks flagged as revoked by remote control: %s", ", ".join(ids))
    if not terminate:
        return ok(f"tasks {', '.join(ids)} flagged as revoked")
    running = {job.message.id for job, _started in control.active()}
    stopped = [i for i in ids if i in running and control.worker.pool.terminate(i, signum)]
    return ok(f"terminate: {', '.join(stopped)}" if stopped else "terminate: tasks unknown")


@command()
def terminate(control: RemoteControl, signal: str | int = "SIGTERM", task_id: Any = None,
              **kwargs: Any) -> dict[str, Any]:
    return revoke_tasks(control, task_id=task_id, terminate=True, signal=signal)


@command()
def shutdown(control: RemoteControl, msg: str = "Got shutdown from remote", **kwargs: Any) -> dict[str, Any]:
    """Warm shutdown, as SIGTERM: stop taking work, finish running tasks, give unstarted ones back."""
    logger.warning("%s: warm shutdown by remote control (%s)", control.hostname, msg)
    control.worker.stopping = True
    return ok("shutting down")


@command()
def rate_limit(control: RemoteControl, task_name: str = "", rate_limit: Any = None, **kwargs: Any) -> dict[str, Any]:
    """This worker's start rate for one task, until it restarts; ``0`` (or ``"0/s"``) removes the limit."""
    if task_name not in registry:
        return nok("unknown task")
    text = str(rate_limit if rate_limit is not None else "").strip()
    try:
        per_second = float(text) if text.replace(".", "", 1).isdigit() else parse_rate_limit(text or None)
    except InvalidTaskOptions as exc:
        return nok(f"Invalid rate limit string: {exc}")
    control.worker.rate_limits.override(task_name, per_second)
    if not per_second:
        logger.info("rate limit of %s removed by remote control", task_name)
        return ok("rate limit disabled successfully")
    logger.info("rate limit of %s set to %s by remote control", task_name, text)
    return ok("new rate limit set successfully")


@command()
def enable_events(control: RemoteControl, **kwargs: Any) -> dict[str, Any]:
    if control.events.enabled:
        return ok("task events already enabled")
    if not control.events.enable():
        return nok("events are not supported on this broker")
    return ok("task events enabled")


@command()
def disable_events(control: RemoteControl, **kwargs: Any) -> dict[str, Any]:
    if not control.events.enabled:
        return ok("task events already disabled")
    control.events.disable()
    return ok("task events disabled")


@command()
def heartbeat(control: RemoteControl, **kwargs: Any) -> None:
    """Send a ``worker-heartbeat`` event now (Celery's ``control heartbeat``)."""
    control.worker.send_worker_event("worker-heartbeat")


__all__ = ["HANDLERS", "RemoteControl", "mailbox", "nok", "ok", "request_info"]


from . import control_actions  # noqa: E402,F401  registers add_consumer, cancel_consumer, time_limit, pool_grow/shrink
