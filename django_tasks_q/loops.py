"""Background loops: the threads that run beside a worker's main loop, written once.

A :class:`Loop` is a named daemon thread that calls ``tick()`` about every
``interval`` seconds until :meth:`Loop.stop`. It owns what each such thread
needs, so the modules that use it only say what one round does:

* **start / stop / join**: ``stop()`` sets the stop event and joins the
  thread for at most ``join_timeout`` seconds (never from the loop's own
  thread). A loop runs once; make a new one to run again.
* **when**: the first tick comes after one ``interval`` (``immediate=True``:
  at once); ``interval`` may be a callable, read before each wait. With
  ``backoff``, the wait after a failed tick doubles up to ``backoff``
  seconds and drops back to ``interval`` after a tick that succeeds.
* **one line per outage**: a tick that raises is logged once, at ERROR,
  when the loop starts failing, and once, at INFO, when a tick succeeds
  again; the failures in between are silent, as is a failure while the
  loop is being stopped. A tick that blocks for as long as it works (the
  remote-control consumer) calls :meth:`recovered` once it is back.
* **database hygiene**: ``django.db.connections.close_all()`` in the loop's
  own thread after a failed tick and when the thread ends, so no broken or
  idle connection is kept (``close_db=False`` for a thread that may run
  where Django is not set up, such as a transport's keeper).
* ``before()`` runs in the thread before the first wait, ``after()`` as the
  thread ends, however it ends (the heartbeat writes the worker's first and
  last row there).

**A loop whose tick raises is not dead.** An ``Exception`` escaping
``tick()`` is an outage: logged as above, and the tick runs again after the
interval -- in effect the loop restarts itself, as often as it takes, and a
broker or database that comes back is used again without a restart of the
worker. Only what is not an ``Exception`` (``SystemExit``,
``KeyboardInterrupt`` raised inside the thread) ends it: that is logged at
CRITICAL and kept in :attr:`Loop.died`, and a worker that finds one of its
loops died stops with a warm shutdown (its tasks finish; its supervisor
starts a new worker), since a worker without its heartbeat or its revocation
watch must not go on taking tasks. See docs/worker.md, "Background threads".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from django.db import connections

logger = logging.getLogger(__name__)


class Loop:
    """One background thread that calls ``tick()`` every ``interval`` seconds; see the module docstring."""

    def __init__(self, name: str, tick: Callable[[], Any], interval: float | Callable[[], float], *,
                 what: str = "", immediate: bool = False, backoff: float | None = None,
                 traceback: bool = True, close_db: bool = True, join_timeout: float = 5.0,
                 before: Callable[[], Any] | None = None, after: Callable[[], Any] | None = None):
        self.name = name
        self.tick = tick
        self.interval = interval
        self.what = what or f"run {name}"  # "could not <what>"
        self.immediate = immediate
        self.backoff = backoff
        self.traceback = traceback
        self.close_db = close_db
        self.join_timeout = join_timeout
        self.before, self.after = before, after
        self.failing = False
        self.died: BaseException | None = None
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Loop {self.name} {'alive' if self.alive else 'not running'}>"

    # -- from the owner's thread ----------------------------------------
    def start(self) -> "Loop":
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end, then wait for its thread (``join_timeout`` seconds at most)."""
        self._stop.set()
        self.join(self.join_timeout if timeout is None else timeout)

    def join(self, timeout: float | None = None) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Set once ``stop()`` was called: a tick that blocks returns when it sees this."""
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` as soon as the loop is being stopped."""
        return self._stop.wait(seconds)

    # -- in the loop's thread -------------------------------------------
    def recovered(self) -> None:
        """A failing loop works again: say so once."""
        if self.failing:
            logger.info("%s works again", self.name)
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        """A round failed: say so once per outage (with the traceback unless ``traceback=False``)."""
        if not self.failing and not self._stop.is_set():
            logger.error("%s could not %s (%s: %s); retrying", self.name, self.what, type(exc).__name__, exc,
                         exc_info=exc if self.traceback else None)
        self.failing = True

    def _run(self) -> None:
        try:
            if self.before is not None:
                self._guarded(self.before)
            delay = self._interval()
            if self.immediate:
                delay = self._round(delay)
            while not self._stop.wait(delay):
                delay = self._round(delay)
        except BaseException as exc:  # not an Exception: the thread ends (module docstring)
            self.died = exc
            logger.critical("%s died (%s: %s)", self.name, type(exc).__name__, exc)
        finally:
            try:
                if self.after is not None:
                    self._guarded(self.after)
            finally:
                if self.close_db:
                    connections.close_all()  # this thread's own connections

    def _round(self, delay: float) -> float:
        """One tick; the wait before the next one."""
        was_failing = self.failing
        if self._guarded(self.tick):
            self.recovered()
            return self._interval()
        if self.backoff is None or not was_failing:
            return self._interval()
        return min(max(delay, 0.001) * 2, self.backoff)

    def _guarded(self, function: Callable[[], Any]) -> bool:
        try:
            function()
        except Exception as exc:
            self.failed(exc)
            if self.close_db:
                connections.close_all()  # a broken connection is not used again
            return False
        return True

    def _interval(self) -> float:
        return float(self.interval() if callable(self.interval) else self.interval)


def spawn(name: str, function: Callable[[], Any], *, close_db: bool = True) -> threading.Thread:
    """Run ``function()`` once in a daemon thread named ``name`` (its connections closed after), started.

    For a one-off helper a loop waits on with a timeout (the monitor's depth
    probe): what ``function`` raises is logged, never raised.
    """
    def run() -> None:
        try:
            function()
        except Exception:
            logger.exception("%s failed", name)
        finally:
            if close_db:
                connections.close_all()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


__all__ = ["Loop", "spawn"]
