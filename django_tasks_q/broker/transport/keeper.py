"""A thread that keeps a consumer's unacked messages reserved for as long as its process lives.

Both ``django://`` and ``redis://`` give an unacked message back to the
queue once its consumer has been silent for ``visibility_timeout`` seconds
-- that is how a killed worker's messages come back. A worker busy with a
long task (a solo pool runs it in the polling thread itself) must not lose
its messages that way, so this thread, not the polling loop, calls each
channel's ``extend_reservations()`` every ``extension_interval`` seconds.
Only a process that stops running (killed, or frozen for longer than the
timeout) loses its reservations. The thread is a :class:`~django_tasks_q.loops.Loop`;
a channel's failed round is reported by the transport's ``on_keeper_error``.
"""

from __future__ import annotations

import logging
from typing import Any

from ...loops import Loop

logger = logging.getLogger(__name__)


def held_tags(qos: Any) -> list[str]:
    """Delivery tags a channel's QoS holds unacked, read from the keeper thread.

    The consumer thread mutates the bookkeeping meanwhile, so a copy that
    changed under us is taken again.
    """
    if qos is None:
        return []
    for _ in range(5):
        try:
            dirty = set(qos._dirty)  # acked, not yet flushed
            return [tag for tag in list(qos._delivered) if tag not in dirty]
        except RuntimeError:  # changed size during iteration
            continue
    return []


class KeeperMixin:
    """For a kombu ``Transport``; its channels implement ``extend_reservations()`` and ``extension_interval``."""

    channels: list[Any]
    keeper_name = "transport-keeper"
    _keeper: Loop | None

    def keep_claims(self) -> None:
        """Start the keeper on the first consumer (publishers never start one). Idempotent."""
        keeper = getattr(self, "_keeper", None)
        if keeper is None or not keeper.alive:
            self._keeper = Loop(self.keeper_name, self._extend_all, self._extension_interval,
                                what="extend reservations", close_db=False, after=self.on_keeper_exit).start()

    def _extend_all(self) -> None:
        """One round of the keeper: every channel's unacked messages stay reserved."""
        for channel in list(self.channels):
            try:
                channel.extend_reservations()
            except Exception as exc:
                self.on_keeper_error(channel, exc)

    def on_keeper_error(self, channel: Any, exc: BaseException) -> None:
        logger.warning("%s could not extend reservations (%s: %s); retrying next round", self.keeper_name,
                       type(exc).__name__, exc)

    def on_keeper_exit(self) -> None:
        """Release what the keeper thread opened for itself."""

    def stop_keeping_claims(self) -> None:
        keeper = getattr(self, "_keeper", None)
        if keeper is not None:
            keeper.stop(timeout=5)  # not joined from the keeper's own thread
        self._keeper = None

    def close_connection(self, connection: Any) -> None:
        self.stop_keeping_claims()
        super().close_connection(connection)  # type: ignore[misc]

    def _extension_interval(self) -> float:
        return min((channel.extension_interval for channel in self.channels), default=1.0)
