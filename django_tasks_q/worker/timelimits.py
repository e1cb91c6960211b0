"""Interrupting a running task from outside: soft time limits and ``terminate``.

The executor runs ``task.run`` inside a ``Guard``. While the guard is open
an exception can be raised *in the task's own thread*:

* ``SoftTimeLimitExceeded`` once ``soft_time_limit`` seconds have passed, so
  the task can clean up (it may catch it);
* ``TaskRevokedError("terminated")`` when a pool's ``terminate(task_id)`` is
  called, from any thread.

How the exception gets there depends on the thread the task runs in:

* The main thread of a process (the solo pool, every prefork child): through
  ``SIGALRM``. ``setitimer(ITIMER_REAL)`` fires the soft limit,
  ``pthread_kill`` delivers a terminate. A signal interrupts blocking calls
  such as ``time.sleep`` or a socket read, so the exception arrives at once.
  The handler is installed on the first guarded task and left in place; it
  does nothing while no guard is open. Tasks must not use ``SIGALRM`` /
  ``signal.alarm`` themselves on these pools.
* Any other thread (the threads pool): through ``PyThreadState_SetAsyncExc``.
  Python raises the exception at that thread's next bytecode, so a thread
  blocked inside one long C call -- a single ``time.sleep(60)``, a socket read
  with no timeout -- sees it only when that call returns.

Either way the exception is raised only while the guard is open: a timer
that fires as the task returns cannot hit the executor's bookkeeping (a late
delivery is swallowed when the guard closes, and the task's own outcome
stands). A task that catches the exception with a broad ``except Exception``
can ignore it; that is the price of stopping a thread cooperatively.

The hard ``time_limit`` is not enforced here: only the prefork pool can, by
killing the child (pools/prefork.py). ``warn_hard_limit_unenforced`` is what
the other pools do instead.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from ..exceptions import SoftTimeLimitExceeded, TaskRevokedError

logger = logging.getLogger(__name__)

_STOPS = (SoftTimeLimitExceeded, TaskRevokedError)
_registry_lock = threading.Lock()
_guards: dict[str, "Guard"] = {}
#: task ids terminated after the pool took them but before their guard opened -> signum
_early: dict[str, int] = {}
_main_guard: "Guard | None" = None  # the open guard of this process's main thread
_handler_installed = False
_warned: set[tuple[str, str]] = set()
_local = threading.local()  # .guard: the open guard of this (non-main) thread


def _injected(base: type[BaseException], message: Any) -> type[BaseException]:
    """A subclass of ``base`` for ``PyThreadState_SetAsyncExc``, which can only raise a class.

    Python instantiates it with no arguments in the target thread, so it takes
    its message from that thread's guard -- a task that catches the exception
    sees the same message as on the signal path. It carries its base's name
    and module, so results record (and pickles rebuild) a plain ``base``.
    """

    def __init__(self: BaseException, *args: Any) -> None:
        guard = getattr(_local, "guard", None)
        base.__init__(self, *(args or ((message(guard),) if guard is not None else ())))

    def __reduce__(self: BaseException) -> Any:
        return base, self.args

    cls = type(base.__name__, (base,), {"__init__": __init__, "__reduce__": __reduce__, "__doc__": base.__doc__})
    cls.__module__, cls.__qualname__ = base.__module__, base.__qualname__
    return cls


_SoftLimitInThread = _injected(SoftTimeLimitExceeded, lambda g: f"soft time limit ({g.soft_time_limit}s) exceeded")
_TerminatedInThread = _injected(TaskRevokedError, lambda g: "terminated")


def _set_async_exc(thread_id: int, exc_class: type[BaseException] | None) -> None:
    """Raise ``exc_class`` in thread ``thread_id`` at its next bytecode (``None`` clears a pending one)."""
    # no argtypes on purpose: None must reach C as NULL, which clears
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               None if exc_class is None else ctypes.py_object(exc_class))


#: how an exception reaches a task's (non-main) thread: ``(thread ident, class or None to cancel)``
_interrupt: Callable[[int, type[BaseException] | None], None] = _set_async_exc


def use_interrupter(function: Callable[[int, type[BaseException] | None], None]) -> None:
    """Replace how soft limits and terminate reach task threads: the gevent pool's greenlets share one
    thread state, so it throws into the greenlet instead of ``PyThreadState_SetAsyncExc``."""
    global _interrupt
    _interrupt = function


def exception_for(thread_id: int, exc_class: type[BaseException]) -> BaseException:
    """``exc_class()`` with the message the task in ``thread_id`` would see (for an interrupter that
    raises an instance from another thread or greenlet)."""
    guard = next((g for g in list(_guards.values()) if g._thread == thread_id and g._open), None)
    previous = getattr(_local, "guard", None)
    _local.guard = guard
    try:
        return exc_class()
    finally:
        _local.guard = previous


def _on_alarm(signum: int, frame: Any) -> None:
    guard = _main_guard
    if guard is not None:
        guard._alarm()


class Guard:
    """Context manager around ``task.run``: makes the running task interruptible.

    ``interruptible=False`` (eager runs in a caller's thread) makes it a no-op.
    After the body, ``terminated(exc)`` tells whether ``exc`` is the
    ``TaskRevokedError`` a ``terminate()`` delivered, and ``signum`` which
    signal was asked for.
    """

    def __init__(self, task_id: str | None, soft_time_limit: float | None, interruptible: bool = True):
        self.task_id = task_id
        self.soft_time_limit = soft_time_limit or None
        self.interruptible = interruptible and task_id is not None
        self.signum: int | None = None  # set when terminate() reached this task
        self._lock = threading.Lock()
        self._open = False
        self._thread = 0
        self._use_signal = False
        self._pending: type[BaseException] | None = None  # for the SIGALRM handler
        self._soft_due: float | None = None
        self._soft_fired = False
        self._timer: threading.Timer | None = None

    # -- the running task's side -------------------------------------
    def __enter__(self) -> "Guard":
        if not self.interruptible:
            return self
        global _main_guard
        assert self.task_id is not None  # interruptible implies a task id
        self._thread = threading.get_ident()
        self._use_signal = threading.current_thread() is threading.main_thread()
        with _registry_lock:
            early = _early.pop(self.task_id, None)
            if early is None:
                _guards[self.task_id] = self
        if early is not None:
            self.signum = early
            raise TaskRevokedError("terminated")
        if self._use_signal:
            _install_handler()
            _main_guard = self
        else:
            _local.guard = self
        self._open = True
        if self.soft_time_limit:
            self._soft_due = time.monotonic() + self.soft_time_limit
            if self._use_signal:
                signal.setitimer(signal.ITIMER_REAL, self.soft_time_limit)
            else:
                self._timer = threading.Timer(self.soft_time_limit, self._soft_expired)
                self._timer.daemon = True
                self._timer.start()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if not self.interruptible:
            return False
        for _attempt in range(3):
            try:
                self._close()
                break
            except _STOPS:  # delivered as the body ended: the body's own outcome stands
                continue
        if isinstance(exc, SoftTimeLimitExceeded) and not exc.args:
            exc.args = (f"soft time limit ({self.soft_time_limit}s) exceeded",)
        elif isinstance(exc, TaskRevokedError) and not exc.args and self.signum is not None:
            exc.args = ("terminated",)
        return False

    def _close(self) -> None:
        global _main_guard
        with self._lock:
            self._open = False  # from here on nothing is delivered
        if self._timer is not None:
            self._timer.cancel()
        if self._use_signal:
            if self._soft_due is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
            self._pending = None
            if _main_guard is self:
                _main_guard = None
        else:
            _interrupt(self._thread, None)  # drop one injected after the body's last bytecode
            _local.guard = None
        # the closed guard stays registered until the pool's discard(): a terminate arriving
        # between now and then finds it closed and answers False instead of waiting for a next run

    def terminated(self, exc: BaseException) -> bool:
        """``exc`` is the TaskRevokedError that ``terminate()`` raised (not one the task raised itself)."""
        return isinstance(exc, TaskRevokedError) and self.signum is not None

    # -- other threads' side -----------------------------------------
    def _soft_expired(self) -> None:
        if self._deliver(SoftTimeLimitExceeded):
            self._soft_fired = True

    def stop(self, signum: int) -> bool:
        """Raise ``TaskRevokedError`` in the task; False when it already finished."""
        self.signum = signum  # before delivery: the task may see the exception at once
        if self._deliver(TaskRevokedError):
            return True
        self.signum = None
        return False

    def _deliver(self, exc_class: type[BaseException]) -> bool:
        with self._lock:
            if not self._open:
                return False
            if self._use_signal:
                self._pending = exc_class
                signal.pthread_kill(self._thread, signal.SIGALRM)
            else:
                _interrupt(self._thread, _SoftLimitInThread if exc_class is SoftTimeLimitExceeded
                           else _TerminatedInThread)
            return True

    def _alarm(self) -> None:
        """In the main thread, from the SIGALRM handler: raise what is due, if anything."""
        if not self._open:
            return
        pending, self._pending = self._pending, None
        if pending is TaskRevokedError:
            raise TaskRevokedError("terminated")
        if pending is None and self._soft_due is not None and not self._soft_fired \
                and time.monotonic() >= self._soft_due - 0.05:  # the itimer, not a stray signal
            self._soft_fired = True
            raise SoftTimeLimitExceeded(f"soft time limit ({self.soft_time_limit}s) exceeded")


def _install_handler() -> None:
    global _handler_installed
    if not _handler_installed:
        signal.signal(signal.SIGALRM, _on_alarm)
        _handler_installed = True


def terminate(task_id: str, signum: int = signal.SIGTERM) -> bool:
    """Raise ``TaskRevokedError`` in the thread running ``task_id`` in this process.

    The caller (a pool) has checked that it holds the task. If the task's guard
    is not open yet, it is raised as soon as it opens. False when the task's
    body has already finished.
    """
    with _registry_lock:
        guard = _guards.get(task_id)
        if guard is None:
            _early[task_id] = signum
            return True
    return guard.stop(signum)


def discard(task_id: str) -> None:
    """The pool is done with ``task_id``: forget its guard and any terminate that did not reach it."""
    with _registry_lock:
        _early.pop(task_id, None)
        guard = _guards.get(task_id)
        if guard is not None and not guard._open:
            del _guards[task_id]


def running(task_id: str) -> bool:
    """A guard is open for ``task_id`` in this process."""
    with _registry_lock:
        guard = _guards.get(task_id)
        return guard is not None and guard._open


def warn_hard_limit_unenforced(pool: str, task_name: str, time_limit: float | None) -> None:
    """Solo and threads cannot kill a task: say so once per task instead of ignoring ``time_limit``."""
    if time_limit is None or (pool, task_name) in _warned:
        return
    _warned.add((pool, task_name))
    logger.warning("task %s has a hard time_limit (%ss) that the %s pool cannot enforce (only prefork can kill a "
                   "task); its soft_time_limit is enforced", task_name, time_limit, pool)
