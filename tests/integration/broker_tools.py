"""Talk to a broker directly (no worker): queue sizes and raw messages."""

from __future__ import annotations

from kombu import Connection

from django_tasks_q.broker.connection import new_connection
from django_tasks_q.broker.queues import get_queue


def queue_size(url: str, name: str) -> int:
    with new_connection(url) as conn:
        queue = get_queue(name)(conn.default_channel)
        return queue.queue_declare().message_count


def declare(url: str, name: str) -> None:
    """Declare the queue, its exchange and its binding, as a worker consuming it would."""
    with new_connection(url) as conn:
        get_queue(name)(conn.default_channel).declare()


def purge(url: str, name: str) -> None:
    with new_connection(url) as conn:
        queue = get_queue(name)(conn.default_channel)
        queue.declare()
        queue.purge()


def publish_raw(url: str, queue_name: str, body, *, headers: dict, content_type: str = "application/json",
                content_encoding: str = "utf-8") -> None:
    """Put a hand-made message on a queue, bypassing our publisher's checks."""
    queue = get_queue(queue_name)
    with new_connection(url) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key, headers=headers,
                         content_type=content_type, content_encoding=content_encoding, declare=[queue],
                         serializer=None if isinstance(body, (bytes, str)) else "json")


__all__ = ["Connection", "declare", "publish_raw", "purge", "queue_size"]
