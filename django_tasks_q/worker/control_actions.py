"""Remote-control commands that change a running worker: queues, time limits, pool size.

Celery's names, arguments and reply shapes, so ``celery control add_consumer
videos`` works against our workers as ``manage.py taskcontrol add_consumer
videos`` does:

=================  ==========================================  ===============================================
command            arguments                                   reply
=================  ==========================================  ===============================================
add_consumer       ``queue`` (``exchange``, ``exchange_type``,  ``{"ok": "add consumer videos"}``
                   ``routing_key`` accepted, see below)
cancel_consumer    ``queue``                                   ``{"ok": "no longer consuming from videos"}``
time_limit         ``task_name``, ``soft``, ``hard``            ``{"ok": "time limits set successfully"}``
pool_grow          ``n`` (default 1)                           ``{"ok": "pool will grow to concurrency 3"}``
pool_shrink        ``n`` (default 1)                           ``{"ok": "pool will shrink to concurrency 1"}``
=================  ==========================================  ===============================================

A refusal is ``{"error": "..."}`` saying why: a queue already consumed or not
consumed, an unknown task, a solo pool, a shrink below one slot, a grow past
``TASKS_Q["MAX_CONCURRENCY"]`` (by default four times the concurrency the
worker started with: a broadcast must not be able to fork a host to death).

Queue and pool changes touch what only the main loop owns (its channel, its
pool), so they are handed to it (worker/handoff.py) and the reply waits for
the result -- up to 0.6 s; a main loop that is busy longer (a solo-pool task
runs in it) gets the change when it is free and the reply says it is pending.
``time_limit`` is a dictionary assignment read when a task starts
(worker/limit_overrides.py).

``add_consumer`` declares the queue as this worker would for ``-Q`` (its Queue
row, ``TASKS_Q["QUEUES"]``, else Celery's default: a direct exchange of the
queue's name); an ``exchange``/``exchange_type``/``routing_key`` sent with the
command is not used. Changes last until the worker stops.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..conf import settings
from .control_commands import command, nok, ok
from .handoff import Pending, Refused

if TYPE_CHECKING:
    from .remote_control import RemoteControl
    from .view import ControlledWorker

logger = logging.getLogger(__name__)


# -- run in the worker's main loop ---------------------------------------
def add_queue(worker: ControlledWorker, name: str) -> str:
    if worker.consumers is None:
        raise Refused(f"not connected to the broker; add {name} again once the worker is")
    worker.consumers.add(name)
    worker.queue_names = [*worker.queue_names, name]  # a new list: other threads read it
    logger.info("%s: consuming %s too (remote control)", worker.hostname, name)
    return f"add consumer {name}"


def cancel_queue(worker: ControlledWorker, name: str) -> str:
    if worker.consumers is None:
        raise Refused(f"not connected to the broker; cancel {name} again once the worker is")
    worker.consumers.cancel(name)
    worker.queue_names = [queue for queue in worker.queue_names if queue != name]
    logger.info("%s: no longer consuming %s (remote control)", worker.hostname, name)
    return f"no longer consuming from {name}"


def _resize_pool(worker: ControlledWorker, change: int) -> str:
    """Grow (``change`` > 0) or shrink the pool, and the prefetch window with it."""
    try:
        worker.pool.grow(change) if change > 0 else worker.pool.shrink(-change)
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    worker.update_prefetch()
    logger.info("%s: pool %s by %d to concurrency %d (remote control)", worker.hostname,
                "grown" if change > 0 else "shrunk", abs(change), worker.pool.concurrency)
    return f"pool will {'grow' if change > 0 else 'shrink'} to concurrency {worker.pool.concurrency}"


# -- the command thread's side -----------------------------------------
def _in_main_loop(control: RemoteControl, function: Any, done: str) -> dict[str, Any]:
    try:
        result = control.worker.handoff.call(function)
    except Refused as exc:
        return nok(str(exc))
    except Pending:
        return ok(f"{done} (pending: the worker's main loop is busy; it is done when the loop is free)")
    except Exception as exc:  # logged by the main loop with its traceback
        return nok(f"{type(exc).__name__}: {exc}")
    return ok(result if isinstance(result, str) else done)


@command()
def add_consumer(control: RemoteControl, queue: str = "", exchange: Any = None, exchange_type: Any = None,
                 routing_key: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Start consuming ``queue`` now (and after a reconnect), until the worker stops."""
    if not isinstance(queue, str) or not queue.strip():
        return nok("add_consumer needs a queue name")
    queue = queue.strip()
    if queue in control.worker.queue_names:  # answered here too, for a main loop that is busy
        return nok(f"already consuming from {queue}")
    return _in_main_loop(control, lambda: add_queue(control.worker, queue), f"add consumer {queue}")


@command()
def cancel_consumer(control: RemoteControl, queue: str = "", **kwargs: Any) -> dict[str, Any]:
    """Stop consuming ``queue``; tasks from it already received still run."""
    if not isinstance(queue, str) or queue.strip() not in control.worker.queue_names:
        return nok(f"not consuming from {queue}")
    queue = queue.strip()
    return _in_main_loop(control, lambda: cancel_queue(control.worker, queue), f"no longer consuming from {queue}")


@command()
def time_limit(control: RemoteControl, task_name: str = "", hard: Any = None, soft: Any = None,
               **kwargs: Any) -> dict[str, Any]:
    """New limits for tasks of ``task_name`` this worker starts from now on; a missing one means none."""
    try:
        limit, soft_limit = control.worker.time_limits.set(task_name, soft=soft, hard=hard)
    except Refused as exc:
        return nok(str(exc))
    logger.info("new time limits for tasks of type %s: soft=%s hard=%s", task_name, soft_limit, limit)
    return ok("time limits set successfully")


def max_concurrency(control: RemoteControl) -> int:
    """How far ``pool_grow`` may go: ``MAX_CONCURRENCY``, else four times the concurrency at start."""
    return int(settings.MAX_CONCURRENCY or 4 * control.start_concurrency)


def _resize(control: RemoteControl, n: Any, grow: bool) -> dict[str, Any]:
    verb = "grow" if grow else "shrink"
    try:
        count = int(n if n is not None else 1)
    except (TypeError, ValueError):
        return nok(f"pool_{verb} needs a whole number of slots, got {n!r}")
    if count < 1:
        return nok(f"pool_{verb} needs a positive number of slots, got {count}")
    pool = control.worker.pool
    if grow and pool.name != "solo":
        cap = max_concurrency(control)
        if pool.concurrency + count > cap:
            return nok(f"pool_grow {count} refused: concurrency {pool.concurrency} + {count} is past the cap of "
                       f"{cap} (TASKS_Q['MAX_CONCURRENCY'])")
    if pool.name == "solo":  # refused here: its main loop may be running a task for long
        try:
            pool.grow(count) if grow else pool.shrink(count)
        except ValueError as exc:
            return nok(str(exc))
    return _in_main_loop(control, lambda: _resize_pool(control.worker, count if grow else -count), f"pool will {verb}")


@command()
def pool_grow(control: RemoteControl, n: Any = 1, **kwargs: Any) -> dict[str, Any]:
    """``n`` more prefork children or threads; the prefetch window grows with them."""
    return _resize(control, n, grow=True)


@command()
def pool_shrink(control: RemoteControl, n: Any = 1, **kwargs: Any) -> dict[str, Any]:
    """``n`` fewer: idle children or threads stop now, busy ones when their task ends."""
    return _resize(control, n, grow=False)


__all__ = ["add_consumer", "add_queue", "cancel_consumer", "cancel_queue", "max_concurrency", "pool_grow",
           "pool_shrink", "time_limit"]
