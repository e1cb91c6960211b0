"""Send one encoded task message to its queue, with bounded retries."""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import OperationalError

from ..conf import settings
from ..core.protocol import EncodedMessage
from ..core.routing import Route
from ..exceptions import BrokerUnavailable, ImproperlyConfigured, InvalidTaskOptions
from . import connection, delayed
from .queues import describe_queue, get_queue

logger = logging.getLogger(__name__)


#: the highest priority each transport orders, when the queue declares no max_priority
TRANSPORT_MAX_PRIORITY = {"redis": 9, "rediss": 9, "django": 255, "memory": 9}


def check_priority(priority: int, queue: Any, url: str) -> None:
    """Refuse a priority the queue cannot order, instead of letting the broker clamp or ignore it."""
    scheme = url.split("://", 1)[0]
    declared = (queue.queue_arguments or {}).get("x-max-priority")
    native = TRANSPORT_MAX_PRIORITY.get(scheme)
    limit = min(declared, native) if declared and native else (declared or native)
    if limit is None:
        raise InvalidTaskOptions(
            f"priority {priority} for queue {queue.name!r}: RabbitMQ ignores priorities on a queue declared "
            f"without max_priority; set max_priority on the Queue (admin) or in TASKS_Q['QUEUES']")
    if priority > limit:
        raise InvalidTaskOptions(f"priority {priority} is above {limit}, the highest queue {queue.name!r} "
                                 f"orders on {scheme}://")


def publish(message: EncodedMessage, route: Route, *, task_id: str, reply_to: str | None = None,
            deliver_at: float | None = None) -> None:
    """Publish to ``route``; raise ``BrokerUnavailable`` (never hang) if the broker is down.

    ``deliver_at`` (epoch seconds) parks the message in the broker's delayed
    store until then (:mod:`django_tasks_q.broker.delayed`).
    """
    queue = get_queue(route.queue)
    if route.priority is not None:
        check_priority(route.priority, queue, settings.BROKER_URL)
    properties = {"correlation_id": task_id, "delivery_mode": 2}
    if reply_to:
        properties["reply_to"] = reply_to
    if route.priority is not None:
        properties["priority"] = route.priority
    state = connection.current()
    exchange = route.exchange if route.exchange is not None else queue.exchange.name
    routing_key = route.routing_key or queue.routing_key
    headers = message.headers
    try:
        if deliver_at is not None and delayed.supports_parking(state.connection):
            exchange, routing_key, headers = delayed.parked_route(state.connection, exchange, routing_key, headers,
                                                                  deliver_at, state.declared)
        state.producer.publish(
            message.payload,
            exchange=exchange,
            routing_key=routing_key,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=headers,
            declare=[] if queue.name in state.declared else [queue],
            retry=True,
            retry_policy=state.retry_policy,
            **properties,
        )
        state.declared.add(queue.name)
    except state.connection.channel_errors as exc:  # e.g. RabbitMQ's PRECONDITION_FAILED on a re-declare
        connection.reset()  # the broker closed the channel: start clean next time
        raise ImproperlyConfigured(
            f"could not send task {message.headers.get('task')} [{task_id}] to queue {queue.name!r} "
            f"({describe_queue(queue)}): the broker refused it: {exc}"
        ) from exc
    except (OperationalError, OSError) as exc:
        connection.reset()
        url = connection.mask_url(settings.BROKER_URL)
        raise BrokerUnavailable(
            f"could not send task {message.headers.get('task')} [{task_id}] to {url} "
            f"after {settings.BROKER_PUBLISH_RETRIES} retries: {exc}"
        ) from exc
