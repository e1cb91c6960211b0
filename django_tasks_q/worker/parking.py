"""Delayed delivery in the worker (broker.delayed): far-off eta tasks go to the broker's delayed store.

A task due later than ``ETA_HOLD_MAX`` is handed back to the broker (parked)
instead of being held in the worker's memory; Redis and django:// release
parked messages when due (:meth:`Parking.release`, once a second),
RabbitMQ dead-letters them into a ready queue the worker consumes and
forwards (:meth:`Parking.consume_ready`). The worker owns one
:class:`Parking` and gives it the two things of its own it needs: how to
ack a job, and how to wrap a delivery callback (``Worker.one_at_a_time``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from kombu import Consumer

from ..broker import connection as publishing
from ..broker import delayed
from .pools.base import Job

logger = logging.getLogger(__name__)


class Parking:
    """The worker's side of delayed delivery: park far-off tasks, release or forward them when due."""

    def __init__(self, hold_max: float, ack: Callable[[Job], None],
                 one_at_a_time: Callable[[Callable[[Any], None]], Any]):
        self.hold_max = hold_max  # ETA_HOLD_MAX: a task due later than this is parked
        self._ack = ack
        self._one_at_a_time = one_at_a_time

    def park(self, job: Job, until: float) -> bool:
        """Give a far-off task to the broker's delayed store instead of holding it; False: hold it."""
        publisher = publishing.current()
        if not delayed.supports_parking(publisher.connection):
            return False
        try:
            delayed.park_received(publisher, job.kombu_message, job.delivery_info["queue"], until)
        except Exception:
            publishing.reset()
            logger.exception("could not park task %s[%s]; holding it in memory instead", job.message.task,
                             job.message.id)
            return False
        logger.info("task %s[%s] is due at %s: parked in the broker until then", job.message.task, job.message.id,
                    job.message.eta.isoformat())
        self._ack(job)
        return True

    def release(self, channel: Any) -> None:
        """Redis and django://: move parked messages that are due back to their queues."""
        release = getattr(channel, "release_parked", None)
        if release is not None:
            moved = release()
            if moved:
                logger.debug("released %d parked message(s)", moved)

    def consume_ready(self, connection: Any, channel: Any) -> list[Consumer]:
        """RabbitMQ: consume the queue parked messages reach when due, and forward them."""
        if connection.transport.driver_type != "amqp":
            return []
        ready = delayed.declare_amqp_topology(connection)
        consumer = Consumer(channel, [ready], on_message=self._one_at_a_time(self._forward), accept=None,
                            no_ack=False, auto_declare=False)
        consumer.consume()
        return [consumer]

    def _forward(self, message: Any) -> None:
        try:
            delayed.forward_ready(publishing.current(), message, self.hold_max)
        except Exception:
            publishing.reset()
            logger.exception("could not forward parked message %s; it goes back to %s",
                             (message.headers or {}).get("id"), delayed.AMQP_READY_QUEUE)
            message.reject(requeue=True)
            return
        message.ack()
