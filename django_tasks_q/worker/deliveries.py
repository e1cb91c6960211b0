"""Delivery callbacks that never run inside one another.

A callback that waits for a broker reply (the dead-letter copy of a refused
message, parking) lets py-amqp deliver the next message from inside that
wait; handled there, two waits on one channel could each take the other's
reply, and both hung for good (the bad-input corpus on RabbitMQ did, now and
then). A delivery that comes in meanwhile is queued and handled once the
current one returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class OneAtATime:
    """The worker's queue of deliveries made while another is being handled; main loop only."""

    def __init__(self) -> None:
        self._queued: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._delivering = False

    def wrap(self, handler: Callable[..., Any]) -> Callable[..., None]:
        """``handler`` as a delivery callback that never runs inside another one of this queue."""
        def deliver(*args: Any) -> None:
            self._queued.append((handler, args))
            if self._delivering:
                return
            self._delivering = True
            try:
                while self._queued:
                    queued, queued_args = self._queued.popleft()
                    queued(*queued_args)
            finally:
                self._delivering = False
        return deliver

    def clear(self) -> None:
        """Forget queued deliveries (the connection that made them is gone: the broker delivers them again)."""
        self._queued.clear()
