"""Copies the broker gives back of tasks already started or ended here: acked, not run again.

Two cases. *Started after an early ack the broker may not have taken* (below).
*Ended*: a redelivered message whose task already has a final result
(:func:`ended_state`) -- a prefork parent records a task whose child it killed
or lost before the broker gives the ``acks_late`` message back, and so does any
worker that finished a task and lost its connection before the ack.

Tasks started after an early ack the broker may not have taken: run once, whatever comes back.

An ack can be lost with the connection either way (AMQP's is never
confirmed; a Redis killed while it synced its log has applied it and sent no
reply). The worker runs such a task rather than lose it, and remembers it
here by ``(id, retries)``: a copy that comes back afterwards is acked, not run
again (``Worker._done_before``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from ..core.states import READY_STATES
from .pools.base import Job

logger = logging.getLogger(__name__)

#: Most task ids remembered as started with an unconfirmed ack (each outage adds at most the prefetch window).
MAX_STARTED_UNACKED = 10_000


class StartedUnacked:
    """``(id, retries)`` of tasks started after an early ack -> whether that ack raised; the oldest forgotten
    past ``MAX_STARTED_UNACKED``. Used by the worker's main loop only."""

    def __init__(self) -> None:
        self._started: OrderedDict[tuple[str, int], bool] = OrderedDict()

    def remember(self, job: Job, *, ack_failed: bool) -> None:
        self._started[(job.message.id, job.message.retries)] = ack_failed
        if len(self._started) > MAX_STARTED_UNACKED:
            self._started.popitem(last=False)

    def take_copy(self, job: Job) -> bool:
        """True for a copy of a task started here -- any copy when its ack raised, a redelivered one when
        the ack seemed to go through -- which is forgotten as it is returned."""
        key = (job.message.id, job.message.retries)
        ack_failed = self._started.get(key)
        if ack_failed is None or not (ack_failed or job.delivery_info.get("redelivered")):
            return False
        del self._started[key]
        return True


def ended_state(backend: Any, job: Job) -> str | None:
    """The final state of a *redelivered* job's task, or ``None`` (not redelivered, not ended, unknown).

    Only a redelivered message pays the read; one that cannot be read runs (the task is not lost).
    """
    if not job.delivery_info.get("redelivered"):
        return None
    try:
        meta = backend.meta(job.message.id)
    except Exception:
        logger.exception("could not read the result of redelivered task %s; running it", job.message.id)
        return None
    return meta.state if meta is not None and meta.state in READY_STATES else None


def already_done(started: StartedUnacked, backend: Any, job: Job) -> str | None:
    """Why this delivered copy must be acked and not run -- its task already started here after an ack
    that may be lost, or (redelivered) already ended -- in words for the log; ``None``: run it."""
    if started.take_copy(job):
        return "came back after its ack was lost with the connection; it was already started here"
    state = ended_state(backend, job)
    return None if state is None else f"came back from the broker but already ended {state}"
