"""The task-queue consumers of one serving connection, changeable while it serves.

``Worker._serve`` starts one kombu ``Consumer`` per queue named by ``-Q``;
``add_consumer`` / ``cancel_consumer`` (worker/control_actions.py) add and
cancel them at run time, in the main loop (worker/handoff.py), because the
channel they consume on belongs to the main thread. The worker's
``queue_names`` follows every change, so a reconnect consumes the same
queues, and ``active_queues`` and the ``Worker`` row show them.

Cancelling stops new deliveries from a queue; tasks from it that the worker
already received (prefetched, or held until their eta) still run, as in
Celery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu import Consumer

from ..broker.queues import consumer_queue, describe_queue
from ..exceptions import ImproperlyConfigured
from .handoff import Refused


class ConsumerSet:
    """Queue name -> ``Consumer`` on the main loop's channel."""

    def __init__(self, connection: Any, channel: Any, hostname: str, make: Callable[[Any, Any, str], Consumer]):
        self.connection = connection
        self.channel = channel
        self.hostname = hostname
        self._make = make  # (channel, kombu Queue, queue name) -> a Consumer not yet declared
        self.consumers: dict[str, Consumer] = {}

    def start(self, names: list[str]) -> None:
        """Declare and consume each queue; a declaration the broker refuses stops the worker (startup)."""
        for name in names:
            queue = consumer_queue(name, self.hostname)
            consumer = self._make(self.channel, queue, name)
            try:
                consumer.declare()
            except self.connection.recoverable_connection_errors:
                raise  # e.g. the database behind django:// is down: reconnect, do not exit
            except self.connection.channel_errors as exc:  # not transient: retrying cannot fix it
                raise ImproperlyConfigured(
                    f"the broker refused queue {name!r} as declared here ({describe_queue(queue)}): "
                    f"{exc}; fix the Queue row or TASKS_Q['QUEUES'], or delete the old declaration") from exc
            consumer.consume()
            self.consumers[name] = consumer

    def add(self, name: str) -> None:
        """Start consuming ``name`` now; :class:`Refused` if it is consumed already or the broker refuses it."""
        if name in self.consumers:
            raise Refused(f"already consuming from {name}")
        queue = consumer_queue(name, self.hostname)
        # RabbitMQ closes a channel whose declaration it refuses: try it on a channel of its own
        # first, so a refusal is an error reply and not a lost serving channel
        probe = self.connection.channel() if self.connection.transport.driver_type == "amqp" else self.channel
        try:
            queue(probe).declare()
        except self.connection.recoverable_connection_errors:
            raise
        except self.connection.channel_errors as exc:
            raise Refused(f"the broker refused queue {name!r} as declared here ({describe_queue(queue)}): {exc}") \
                from exc
        finally:
            if probe is not self.channel:
                try:
                    probe.close()
                except Exception:  # closed by the refusal already
                    pass
        consumer = self._make(self.channel, queue, name)
        consumer.consume()
        self.consumers[name] = consumer

    def cancel(self, name: str) -> None:
        """Stop consuming ``name``; :class:`Refused` if it is not consumed."""
        if name not in self.consumers:
            raise Refused(f"not consuming from {name}")
        if len(self.consumers) == 1:
            raise Refused(f"{name} is the only queue this worker consumes; add another first, or shut it down")
        self.consumers.pop(name).cancel()

    def all(self) -> list[Consumer]:
        return list(self.consumers.values())


__all__ = ["ConsumerSet"]
