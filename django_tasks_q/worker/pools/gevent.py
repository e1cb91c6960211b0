"""The gevent pool: ``-c`` greenlets run tasks in one process (``taskworker -P gevent -c 100``).

Once gevent has monkey-patched the process (``taskworker`` re-executes
itself through worker/gevent_main.py to patch before Django starts), every
``threading.Thread`` is a greenlet and every blocking socket call, sleep or
lock wait yields to the others. So this is the threads pool, unchanged:
its threads, the worker's main loop and its background threads (heartbeat,
remote control, events) all become greenlets of one OS thread.

One thing differs: a soft time limit or ``terminate()`` cannot reach a
greenlet through ``PyThreadState_SetAsyncExc`` (greenlets share one thread
state), so this pool delivers them with ``greenlet.throw`` from gevent's hub.
Unlike the threads pool, that interrupts a blocking ``time.sleep`` or socket
read at once. A hard ``time_limit`` is not enforced, as in the threads pool.

Caveats (docs/worker.md): Django database connections are per thread, so
per greenlet -- ``-c 100`` can open 100 connections; a CPU-bound task blocks
every other greenlet, the main loop included.
"""

from __future__ import annotations

import threading
from typing import Any

from ...exceptions import ImproperlyConfigured
from .. import timelimits
from .threads import ThreadPool

#: thread ident (gevent: ``id(greenlet)``) -> the greenlet serving tasks
_greenlets: dict[int, Any] = {}
#: pending throws, so that a guard closing before the hub runs one can cancel it
_pending: dict[int, Any] = {}


def _throw(thread_id: int, exc_class: type[BaseException] | None) -> None:
    """The interrupter for greenlets (``timelimits.use_interrupter``): throw ``exc_class`` into one; ``None``
    cancels."""
    from gevent import get_hub

    pending = _pending.pop(thread_id, None)
    if pending is not None:
        pending.stop()
    greenlet = _greenlets.get(thread_id)
    if exc_class is None or greenlet is None:
        return

    def throw() -> None:
        if _pending.pop(thread_id, None) is not None and not greenlet.dead:
            greenlet.throw(timelimits.exception_for(thread_id, exc_class))

    _pending[thread_id] = get_hub().loop.run_callback(throw)


class GeventPool(ThreadPool):
    name = "gevent"

    def __init__(self, concurrency: int, hostname: str, **options: Any):
        try:
            from gevent import monkey
        except ImportError as exc:
            raise ImproperlyConfigured("-P gevent needs the gevent package: pip install django-tasks-q[gevent]") \
                from exc
        if not monkey.is_module_patched("threading"):
            raise ImproperlyConfigured("the gevent pool needs a monkey-patched process: start it with "
                                       "`manage.py taskworker -P gevent`, which patches before Django starts")
        super().__init__(concurrency, hostname, **options)

    def start(self) -> None:
        timelimits.use_interrupter(_throw)  # greenlets share one thread state: see the module docstring
        super().start()

    def _serve(self) -> None:
        from gevent import getcurrent

        ident = threading.get_ident()
        _greenlets[ident] = getcurrent()
        try:
            super()._serve()
        finally:
            _greenlets.pop(ident, None)
