"""``async def`` tasks: each worker thread runs them on one event loop of its own, kept for its life.

A task whose function is a coroutine function is run to completion on the
loop of the thread that runs it -- made on first use and reused by every
later task of that thread -- so clients and connections a task caches on
its loop survive from one task to the next, where ``asyncio.run`` would make
and close a loop per call. An exception raised into the thread while the
coroutine waits (a soft time limit, a terminate) cancels the coroutine, lets
its ``finally`` blocks run, and is raised as the task's outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import context

T = TypeVar("T")
#: seconds between wake-ups of a running task's loop
TICK = 0.1
_local = threading.local()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop for tasks (a new one after it was closed)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def share_loop(loop: asyncio.AbstractEventLoop) -> None:
    """From now on, this thread's coroutine tasks run on ``loop``, running in another thread (``-P asyncio``)."""
    _local.shared = loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on this thread's loop -- or the pool's shared one -- and return its result; on an
    interruption, cancel it, then re-raise."""
    shared = getattr(_local, "shared", None)
    if shared is not None:
        return _run_on(shared, coroutine)
    loop = thread_loop()
    future = loop.create_task(coroutine)
    wake: list[asyncio.Handle] = []

    def tick() -> None:
        """Wake the loop every ``TICK`` seconds: an exception put into this thread from outside (the
        threads pool's soft time limit) is only noticed when Python code runs, not in select()."""
        wake[:] = [loop.call_later(TICK, tick)]

    wake.append(loop.call_soon(tick))
    try:
        return loop.run_until_complete(future)
    except BaseException:
        if not future.done():
            future.cancel()
            try:
                loop.run_until_complete(asyncio.gather(future, return_exceptions=True))
            except BaseException:  # interrupted again while cleaning up: leave the loop usable
                pass
        raise
    finally:
        for handle in wake:
            handle.cancel()


def _run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Hand ``coroutine`` to ``loop`` and wait for it, looking up every ``TICK`` seconds so an exception
    put into this thread (soft time limit, terminate) is seen; it cancels the coroutine on the loop."""
    future = asyncio.run_coroutine_threadsafe(_as(context.current(), coroutine), loop)
    try:
        while True:
            try:
                return future.result(timeout=TICK)
            except concurrent.futures.TimeoutError:
                continue
    except BaseException:
        future.cancel()  # the coroutine gets CancelledError on the loop and cleans up there
        raise


async def _as(request: context.Request, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` with the task's request: the loop's thread has none, and ``self.request``,
    ``self.retry()`` and ``update_state()`` read it (each asyncio task has its own copy of the context)."""
    context.push(request)
    try:
        return await coroutine
    finally:
        context.pop()


__all__ = ["run", "share_loop", "thread_loop"]
