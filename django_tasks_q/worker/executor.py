"""Run one task and decide its outcome: the whole execution policy in one ladder.

``execute()`` is called by every pool (in the worker process, a thread or a
prefork child). Each outcome -- success, retry, reject, terminated, failure --
decides the stored state, the hooks and signals, and what the worker does
with the message, in one readable place. Nothing raised by a task, a hook or
a receiver escapes: a worker never dies from a task.

Retries: ``self.retry()`` only raises ``Retry`` carrying the next attempt;
the ladder stores RETRY *first* and sends the next attempt after, so a quick
next attempt can never have its SUCCESS overwritten by a late RETRY.
``record_stopped()`` is the same bookkeeping for a task stopped from outside
its process (a prefork child killed by the hard time limit or ``terminate``).
"""

from __future__ import annotations

import inspect
import logging
import random
import reprlib
import signal as signals_module
import time
import traceback as tb
from dataclasses import dataclass, field
from typing import Any

from django.db import connections

from .. import signals
from ..conf import settings
from ..core import context
from ..core.calling import send
from ..core.protocol import TaskMessage
from ..core.registry import registry
from ..core.states import TaskState
from ..core.task import Task
from ..exceptions import EncodeError, Reject, Retry, TaskRevokedError
from ..results.backend import ResultBackend, describe_exception, get_backend
from . import workflow
from .revoked import record_revoked
from .timelimits import Guard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened, and what the worker should do with the message.

    ``retval``, ``exception``, ``traceback`` and ``retry`` are for callers in
    the same process (eager mode); ``slim()`` drops them before an outcome
    crosses a pipe, since a return value need not pickle.
    """

    state: str
    requeue: bool = False  # only for Reject(requeue=True)
    runtime: float = 0.0
    retval: Any = field(default=None, compare=False, repr=False)
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    traceback: str = field(default="", compare=False, repr=False)
    retry: Retry | None = field(default=None, compare=False, repr=False)
    #: a short repr of the return value or exception, kept by ``slim()`` for task events
    summary: str = field(default="", compare=False, repr=False)

    def describe(self) -> str:
        """``summary``, or a short repr of the exception or return value (what events carry)."""
        if self.summary:
            return self.summary
        return _short_repr(self.exception if self.exception is not None else self.retval)

    def slim(self) -> "Outcome":
        return Outcome(self.state, self.requeue, self.runtime, traceback=self.traceback, summary=self.describe())


_reprs = reprlib.Repr()
_reprs.maxstring = _reprs.maxother = _reprs.maxlong = 1024
_reprs.maxlevel = 3


def _short_repr(value: Any) -> str:
    try:
        return _reprs.repr(value)
    except Exception as exc:  # a broken __repr__ must not break the task's outcome
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def _explain_type_error(task: Task, exc: TypeError, args: tuple, kwargs: dict) -> TypeError:
    """A call with the wrong arguments becomes a TypeError that names the task."""
    try:
        inspect.signature(task.function).bind(*(((task,) if task.options.bind else ()) + tuple(args)), **kwargs)
    except TypeError as bind_error:
        return TypeError(f"task {task.name} called with wrong arguments: {bind_error}")
    return exc  # the TypeError came from inside the task


def backoff_countdown(task: Task, retries: int) -> float | None:
    """Seconds before the next automatic retry; ``None`` means ``default_retry_delay``.

    As Celery: ``factor * 2 ** retries`` capped at ``retry_backoff_max``, then
    with ``retry_jitter`` ("full jitter") a random delay between 0 and that.
    Unlike Celery the factor may be a fraction (``retry_backoff=0.5``).
    """
    opts = task.options
    if not opts.retry_backoff:
        return None
    factor = 1 if opts.retry_backoff is True else opts.retry_backoff
    countdown = min(opts.retry_backoff_max, factor * (2 ** retries))
    if opts.retry_jitter:
        countdown = random.uniform(0, countdown)
    return max(0.0, countdown)


def _autoretry(task: Task, exc: Exception) -> None:
    """Turn an exception listed in ``autoretry_for`` into ``self.retry``.

    Past ``max_retries`` ``retry()`` raises ``MaxRetriesExceededError`` from
    ``exc`` (Celery re-raises ``exc`` itself; see docs/tasks.md).
    """
    opts = task.options
    if not opts.autoretry_for or not isinstance(exc, opts.autoretry_for):
        return
    if opts.dont_autoretry_for and isinstance(exc, opts.dont_autoretry_for):
        return
    task.retry(exc=exc, countdown=backoff_countdown(task, task.request.retries))


def _safely(what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:
        logger.exception("%s raised; the task's outcome stands", what)


def _send_links(links: list | None, first_arg: Any, parent: context.Request) -> None:
    for link in links or []:
        args = list(link.get("args") or ())
        if not link.get("immutable"):
            args = [first_arg, *args]
        options = {k: v for k, v in (link.get("options") or {}).items() if k in ("queue", "routing_key", "priority")}
        _safely(f"link {link.get('task')}", send, link["task"], args, link.get("kwargs") or {},
                {**options, "parent_id": parent.id, "root_id": parent.root_id})


def execute(message: TaskMessage, delivery_info: dict, hostname: str | None, *,
            backend: ResultBackend | None = None, eager: bool = False) -> Outcome:
    """Run ``message`` in this thread, store its state, run its hooks; never raise.

    ``eager``: called by ``task.apply()`` in the caller's process, so the
    caller's database connections and transactions are left alone, and no
    time limit or terminate can interrupt the caller's thread.
    """
    backend = backend or get_backend()
    task = registry[message.task]  # the consumer already refused unknown names
    request = context.Request.from_message(message, delivery_info, hostname, eager=eager, backend=backend)
    args, kwargs = request.args, request.kwargs
    track = settings.TRACK_STARTED
    store = not (message.ignore_result or task.options.ignore_result)
    started = time.monotonic()
    state, retval, einfo = TaskState.SUCCESS, None, None
    requeue, retry = False, None
    guard = Guard(request.id, message.soft_time_limit, interruptible=not eager)
    if not eager:
        _db_hygiene()
    context.push(request)
    try:
        if track and store:
            backend.mark_started(message.id, request=request, task_name=task.name)
        signals.send(signals.task_prerun, sender=task, task_id=request.id, task=task, args=args, kwargs=kwargs)
        try:
            try:
                with guard:
                    retval = task.run(*args, **kwargs)
            except TypeError as exc:
                raise _explain_type_error(task, exc, args, kwargs) from exc
            except (Retry, Reject):
                raise
            except Exception as exc:
                if not guard.terminated(exc):
                    _autoretry(task, exc)
                raise
        except Retry as exc:
            state, einfo = TaskState.RETRY, tb.format_exc()
            cause = exc.exc or exc
            if store:
                _safely("storing RETRY", backend.mark, request.id, state, result=describe_exception(cause),
                        traceback=einfo, request=request, task_name=task.name)
            resend = getattr(exc, "resend", None)  # set by Task.retry(); a bare `raise Retry()` sends nothing
            try:
                if resend is not None:
                    resend()
            except Exception as publish_error:  # the next attempt could not be sent: a failure, not a silent drop
                state, retval, einfo = TaskState.FAILURE, publish_error, tb.format_exc()
                logger.error("task %s[%s] could not send its retry: %s", task.name, request.id, publish_error)
                _fail(backend, request, task, message, publish_error, einfo, store)
            else:
                _safely("on_retry", task.on_retry, cause, request.id, args, kwargs, einfo)
                signals.send(signals.task_retry, sender=task, request=request, reason=cause, einfo=einfo)
                retval, retry = cause, exc
        except Reject as exc:
            state, requeue, retval = TaskState.REVOKED if not exc.requeue else TaskState.RECEIVED, exc.requeue, exc
            logger.warning("task %s[%s] rejected itself (requeue=%s): %s", task.name, request.id, exc.requeue, exc)
        except Exception as exc:
            if guard.terminated(exc):
                state, retval, einfo = TaskState.REVOKED, exc, tb.format_exc()
                logger.warning("task %s[%s] terminated (signal %s)", task.name, request.id, guard.signum)
                # as Celery: no on_failure, no errbacks
                record_revoked(backend, request, exc, store=store, traceback=einfo, terminated=True,
                               signum=guard.signum)
            else:
                state, retval, einfo = TaskState.FAILURE, exc, tb.format_exc()
                logger.error("task %s[%s] raised %s: %s", task.name, request.id, type(exc).__name__, exc)
                _fail(backend, request, task, message, exc, einfo, store)
        else:
            runtime = time.monotonic() - started
            if store:
                try:
                    backend.mark(message.id, state, result=retval, request=request, task_name=task.name,
                                 runtime=runtime)
                except (TypeError, ValueError) as exc:  # the return value is not JSON
                    state, einfo = TaskState.FAILURE, tb.format_exc()
                    error = EncodeError(f"task {task.name} returned {type(retval).__name__} which cannot be "
                                        f"stored as a result: {exc}")
                    _store_failure(backend, request, task, error, einfo, store)
                    retval = error
            if state == TaskState.SUCCESS:
                logger.info("task %s[%s] succeeded in %.4fs: %r", task.name, request.id, runtime, retval)
                _safely("on_success", task.on_success, retval, request.id, args, kwargs)
                signals.send(signals.task_success, sender=task, result=retval)
                workflow.on_success(message, retval, request)  # links, next chain step (never raises)
    except Exception:  # the result store itself failed: log it, keep serving
        logger.exception("task %s[%s]: could not record its state", message.task, message.id)
        state = TaskState.FAILURE
    finally:
        try:  # self.request stays set for after_return and task_postrun, as in Celery
            _safely("after_return", task.after_return, state, retval, request.id, args, kwargs, einfo)
            signals.send(signals.task_postrun, sender=task, task_id=request.id, task=task, args=args, kwargs=kwargs,
                         retval=retval, state=state)
        finally:
            context.pop()
            if not eager:
                _db_hygiene()
    if message.chord or message.chain:  # a chord member (or a chain ending in one): count it (worker/chords.py)
        from .chords import on_member_finished
        _safely("chord accounting", on_member_finished, message, state, retval, request, backend)
    failed = state == TaskState.FAILURE and isinstance(retval, BaseException)
    return Outcome(state=state, requeue=requeue, runtime=time.monotonic() - started,
                   retval=None if failed else retval, exception=retval if failed else None,
                   traceback=einfo or "", retry=retry)


def _fail(backend: Any, request: context.Request, task: Task, message: TaskMessage, exc: BaseException,
          einfo: str, store: bool) -> None:
    """FAILURE: store it, then ``on_failure``, ``task_failure`` and the errbacks."""
    _store_failure(backend, request, task, exc, einfo, store)
    _safely("on_failure", task.on_failure, exc, request.id, request.args, request.kwargs, einfo)
    signals.send(signals.task_failure, sender=task, task_id=request.id, exception=exc, args=request.args,
                 kwargs=request.kwargs, traceback=einfo, einfo=einfo)
    workflow.on_failure(message, request, exc, einfo, backend)  # errbacks, later chain steps FAILURE


def record_stopped(message: TaskMessage, delivery_info: dict, hostname: str | None, error: BaseException,
                   *, signum: int | None = None) -> str:
    """Record a task whose process was killed under it; return the state recorded.

    ``TaskRevokedError`` -> REVOKED (``terminate``), anything else -> FAILURE
    (e.g. ``TimeLimitExceeded``) with the errbacks sent, as Celery's parent
    does for a hard time limit. Runs in the worker, never raises.
    """
    request = context.Request.from_message(message, delivery_info, hostname)
    task = registry.get(message.task)
    store = not (message.ignore_result or (task is not None and task.options.ignore_result))
    einfo = "".join(tb.format_exception_only(type(error), error))
    revoked = isinstance(error, TaskRevokedError)
    try:
        backend = get_backend()
        if revoked:
            record_revoked(backend, request, error, store=store, traceback=einfo, terminated=True,
                           signum=signals_module.SIGTERM if signum is None else signum)
        elif store:
            backend.mark(message.id, TaskState.FAILURE, result=describe_exception(error), traceback=einfo,
                         request=request, task_name=message.task)
    except Exception:
        logger.exception("could not record that %s[%s] was stopped", message.task, message.id)
    if not revoked:
        workflow.on_failure(message, request, error, einfo)
    if message.chord or message.chain:  # a killed chord member fails its chord (worker/chords.py)
        from .chords import on_member_finished
        _safely("chord accounting", on_member_finished, message, TaskState.REVOKED if revoked else TaskState.FAILURE,
                error, request, get_backend())
    return TaskState.REVOKED if revoked else TaskState.FAILURE


def _store_failure(backend: Any, request: context.Request, task: Task, exc: BaseException, einfo: str,
                   store: bool) -> None:
    if store:
        backend.mark(request.id, TaskState.FAILURE, result=describe_exception(exc), traceback=einfo,
                     request=request, task_name=task.name, runtime=None)


#: a connection unused for longer than this is checked (one ``SELECT 1``) before the next task:
#: the server may have dropped it meanwhile (restart, failover, idle timeout, pg_terminate_backend)
IDLE_CHECK_AFTER = 0.1


def _db_hygiene() -> None:
    """Drop connections a task broke or left mid-transaction, or the server dropped while idle,
    so the next task starts clean. Back-to-back tasks pay no round trip."""
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        conn.queries_log.clear()  # DEBUG = True keeps every statement, arguments too: per task, as Django per request
        if conn.connection is None:
            continue
        idle = now - getattr(conn, "_tasksq_used_at", now)
        setattr(conn, "_tasksq_used_at", now)  # a mark of ours on Django's connection wrapper
        if conn.in_atomic_block or (conn.errors_occurred and not conn.is_usable()):
            logger.warning("closing database connection %r left broken or inside a transaction", conn.alias)
            conn.close()
        elif idle > IDLE_CHECK_AFTER and not conn.is_usable():
            logger.info("database connection %r was closed by the server while idle; reconnecting", conn.alias)
            conn.close()
        elif conn.settings_dict.get("CONN_MAX_AGE"):
            conn.close_if_unusable_or_obsolete()
