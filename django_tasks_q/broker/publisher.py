"""Send one encoded task message to its queue, with bounded retries."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError

from ..conf import settings
from ..core.protocol import EncodedMessage
from ..core.routing import Route
from ..exceptions import BrokerUnavailable
from . import connection
from .queues import get_queue

logger = logging.getLogger(__name__)


def publish(message: EncodedMessage, route: Route, *, task_id: str, reply_to: str | None = None) -> None:
    """Publish to ``route``; raise ``BrokerUnavailable`` (never hang) if the broker is down."""
    queue = get_queue(route.queue)
    properties = {"correlation_id": task_id, "delivery_mode": 2}
    if reply_to:
        properties["reply_to"] = reply_to
    if route.priority is not None:
        properties["priority"] = route.priority
    try:
        state = connection.current()
        state.producer.publish(
            message.payload,
            exchange=route.exchange if route.exchange is not None else queue.exchange.name,
            routing_key=route.routing_key or queue.routing_key,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=message.headers,
            declare=[] if queue.name in state.declared else [queue],
            retry=True,
            retry_policy=state.retry_policy,
            **properties,
        )
        state.declared.add(queue.name)
    except (OperationalError, OSError) as exc:
        connection.reset()
        url = connection.mask_url(settings.BROKER_URL)
        raise BrokerUnavailable(
            f"could not send task {message.headers.get('task')} [{task_id}] to {url} "
            f"after {settings.BROKER_PUBLISH_RETRIES} retries: {exc}"
        ) from exc
