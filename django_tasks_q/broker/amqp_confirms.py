"""A batch of messages to RabbitMQ with publisher confirms pipelined: publish them all, then read the confirms.

Every publish to RabbitMQ waits for its confirm (``confirm_publish``,
broker/connection.py): a persistent message is confirmed once it is on
disk, and a publisher that waits after each message waits for one disk
sync per message (about a millisecond). A bulk send
(``apply_async_many()``) does not need to: the whole batch goes out, then
its confirms are read, and RabbitMQ confirms many messages with one
``basic.ack`` (``multiple``) as each sync lands -- about one sync per
batch. The caller still returns only once every message is confirmed.

The batch goes out on a channel of its own, opened in confirm mode for it
and closed after: delivery tags then count from 1 with nothing else on
the channel, so which messages an ack or a nack covers is exact. A nack
(RabbitMQ refused messages: a queue's ``reject-publish`` overflow, an
internal error) raises :class:`Refused` naming how many were confirmed;
the messages are built as kombu's ``Producer`` builds them, so a consumer
cannot tell the two paths apart.
"""

from __future__ import annotations

from typing import Any

#: (payload, content type, content encoding, headers, properties) of one message; ``properties`` holds
#: ``correlation_id``, ``delivery_mode`` and, when set, ``priority`` and ``reply_to``.
Outgoing = tuple[str | bytes, str, str, dict[str, Any], dict[str, Any]]


class Refused(Exception):
    """RabbitMQ nacked messages of the batch."""

    def __init__(self, confirmed: int, refused: int, total: int):
        self.confirmed, self.refused, self.total = confirmed, refused, total
        super().__init__(f"RabbitMQ refused (nacked) {refused} of {total} messages; {confirmed} were confirmed")


def publish_confirmed(connection: Any, messages: list[Outgoing], exchange: str, routing_key: str,
                      timeout: float | None = None) -> int:
    """Publish ``messages`` in order on a confirm-mode channel of ``connection`` (a kombu connection to
    RabbitMQ), wait for every confirm, and return how many were confirmed (all of them). Raises
    :class:`Refused` on a nack, kombu's connection errors when the connection breaks, and
    ``socket.timeout`` when ``timeout`` seconds pass without a confirm."""
    channel = connection.channel()
    outstanding = set(range(1, len(messages) + 1))
    refused = 0

    def confirmed(delivery_tag: int, multiple: bool, nacked: bool = False) -> None:
        nonlocal outstanding, refused
        covered = {tag for tag in outstanding if tag <= delivery_tag} if multiple else {delivery_tag} & outstanding
        outstanding -= covered
        if nacked:
            refused += len(covered)

    # Listeners, not a wait's one-shot callback: py-amqp reads a waiting frame before each publish (to see a
    # connection.blocked), so confirms also arrive while the batch is still going out.
    on_ack, on_nack = (lambda tag, multiple: confirmed(tag, multiple)), \
        (lambda tag, multiple: confirmed(tag, multiple, nacked=True))
    channel.events["basic_ack"].add(on_ack)
    channel.events["basic_nack"].add(on_nack)
    try:
        channel.confirm_select()
        for payload, content_type, content_encoding, headers, properties in messages:
            properties = dict(properties)
            priority = properties.pop("priority", 0)  # kombu's Producer.publish sends 0 when none is given
            body = payload.encode(content_encoding or "utf-8") if isinstance(payload, str) else payload
            message = channel.prepare_message(body, priority, content_type, content_encoding, headers, properties)
            channel._basic_publish(message, exchange=exchange, routing_key=routing_key)
        while outstanding:
            channel.connection.drain_events(timeout=timeout)  # one frame; raises socket.timeout after `timeout`
        if refused:
            raise Refused(len(messages) - refused, refused, len(messages))
        return len(messages)
    finally:
        try:
            channel.close()
        except Exception:  # the connection broke: the error that broke it is what the caller sees
            pass
