"""The asyncio pool: the coroutines of every ``async def`` task in the process share one event loop.

``taskworker -P asyncio -c 500`` runs up to 500 tasks at once. As in the
threads pool, each task's bookkeeping (states, retries, signals, results:
the same executor as every pool) runs in one of ``-c`` threads; an
``async def`` task's coroutine is handed to the pool's single loop, where
all of them wait together, and its thread waits for the outcome. Sync tasks
run in the threads, as in the threads pool.

A soft time limit or terminate reaches the waiting thread (it looks up
every 0.1 s), which cancels the coroutine on the loop; the coroutine's
``except CancelledError`` / ``finally`` then run on the loop. A hard
``time_limit`` is not enforced, as in the threads pool.
"""

from __future__ import annotations

import asyncio
import threading

from ...core import aio
from .threads import ThreadPool


class AsyncioPool(ThreadPool):
    name = "asyncio"

    def __init__(self, concurrency: int, hostname: str, **options):
        super().__init__(concurrency, hostname, **options)
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="TaskLoop", daemon=True)

    def start(self) -> None:
        self._loop_thread.start()
        super().start()

    def _serve(self) -> None:
        aio.share_loop(self.loop)  # this thread's coroutine tasks run on the pool's loop
        super()._serve()

    def stop(self, wait: bool = True) -> None:
        super().stop(wait)
        self.loop.call_soon_threadsafe(self.loop.stop)
