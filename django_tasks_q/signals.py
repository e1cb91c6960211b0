"""Signals sent around publishing, task execution, and worker and beat life (docs/signals.md).

They are Django ``Signal`` objects with Celery's names and arguments, so a
receiver written for Celery's signal usually only needs its import changed.
Everything in the package sends them through :func:`send`, which never lets
a receiver's exception reach the worker or the task: it is logged, naming
the receiver, and the next receiver still runs.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

# -- publishing (the process that sends the task) ------------------------
#: sender=task name; kwargs: body, exchange, routing_key, headers, properties, declare, retry_policy
before_task_publish = Signal()
#: sender=task name; kwargs: body, exchange, routing_key, headers
after_task_publish = Signal()

# -- in the worker, around one task ----------------------------------------
#: sender=the worker's Consumer role (the Worker); kwargs: request (a task message has been received)
task_received = Signal()
#: sender=task; kwargs: task_id, task, args, kwargs
task_prerun = Signal()
#: sender=task; kwargs: task_id, task, args, kwargs, retval, state
task_postrun = Signal()
#: sender=task; kwargs: result
task_success = Signal()
#: sender=task; kwargs: task_id, exception, args, kwargs, traceback, einfo
task_failure = Signal()
#: sender=task; kwargs: request, reason, einfo
task_retry = Signal()
#: sender=task name; kwargs: message, reason (a message was refused: bad body, bad signature...)
task_rejected = Signal()
#: sender=None; kwargs: name, id, message, exc (a message for a task this worker does not know)
task_unknown = Signal()
#: sender=task (None if unknown here); kwargs: request, terminated, signum, expired (revoked or expired, not run
#: or stopped)
task_revoked = Signal()

# -- worker life ------------------------------------------------------------
#: sender=Worker instance; sent before the broker connection is opened
worker_init = Signal()
#: sender=Worker instance; sent once it consumes its queues
worker_ready = Signal()
#: sender=Worker instance; kwargs: sig (signal name or "remote"), how ("warm" or "cold"), exitcode
worker_shutting_down = Signal()
#: sender=Worker instance; sent when it has stopped
worker_shutdown = Signal()
#: sender=None; kwargs: pid. Sent in each prefork child just after the fork, before it runs a task
worker_process_init = Signal()

# -- beat ---------------------------------------------------------------------
#: sender=Scheduler instance; sent when taskbeat (or --beat) starts
beat_init = Signal()
#: sender=Scheduler instance; kwargs: due (the names of the entries sent this tick)
beat_tick = Signal()


def send(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal``; a receiver that raises is logged (with its name) and does no other harm."""
    if not signal.receivers:
        return
    for receiver, outcome in signal.send_robust(sender=sender, **kwargs):
        if isinstance(outcome, Exception):
            name = getattr(receiver, "__qualname__", repr(receiver))
            logger.error("a receiver of a django_tasks_q signal (%s.%s) raised %s: %s; ignored",
                         getattr(receiver, "__module__", "?"), name, type(outcome).__name__, outcome,
                         exc_info=(type(outcome), outcome, outcome.__traceback__))
