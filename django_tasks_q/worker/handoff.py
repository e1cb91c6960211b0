"""Run a function in the worker's main loop on behalf of another thread, and wait for its answer.

Remote-control commands are handled in their own thread (worker/remote_control.py),
but some of them change what only the main loop may touch: the kombu channel
that consumes the task queues (``add_consumer``, ``cancel_consumer``) and the
pool (``pool_grow``, ``pool_shrink``). The command thread hands such a change
over with :meth:`Handoff.call`; the main loop runs it at its next pass
(:meth:`Handoff.run_pending`, called from ``Worker._tick``, at least four
times a second when idle) and the command thread replies with the result.

If the main loop does not get to it in time -- a solo-pool task runs in the
main thread, or the worker is reconnecting to its broker -- the call stays
queued and runs when the loop is free; :meth:`call` then says it is pending.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class _Call:
    def __init__(self, function: Callable[[], Any]):
        self.function = function
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Refused(Exception):
    """The change cannot be made (e.g. the queue is already consumed); the message says why."""


class Pending(Exception):
    """The main loop did not run the call within the wait; it runs when the loop is free."""


class Handoff:
    """A thread-safe queue of calls the worker's main loop runs."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()

    def call(self, function: Callable[[], Any], wait: float = 0.6) -> Any:
        """Have the main loop run ``function()``; its return value, or the exception it raised.

        Raises :class:`Pending` when the loop has not run it within ``wait`` seconds.
        """
        call = _Call(function)
        self._calls.put(call)
        if not call.done.wait(wait):
            raise Pending()
        if call.error is not None:
            raise call.error
        return call.result

    def run_pending(self) -> None:
        """In the main loop: run every queued call. Never raises (a failed call reports its exception)."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call.result = call.function()
            except Refused as exc:  # the reply says why; logged too, for a caller answered "pending"
                logger.warning("%s", exc)
                call.error = exc
            except Exception as exc:
                logger.exception("a remote-control change failed in the main loop")
                call.error = exc
            finally:
                call.done.set()


__all__ = ["Handoff", "Pending", "Refused"]
