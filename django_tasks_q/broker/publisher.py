"""Send one encoded task message to its queue, with bounded retries."""

from __future__ import annotations

import json
import logging
from base64 import b64encode
from json.encoder import encode_basestring_ascii
from typing import Any

from kombu.exceptions import OperationalError

from .. import signals
from ..conf import settings
from ..core.protocol import EncodedMessage, new_id, new_ids
from ..core.routing import Route
from ..exceptions import BrokerUnavailable, ImproperlyConfigured, InvalidTaskOptions
from . import connection, delayed
from .queues import describe_queue, get_queue

logger = logging.getLogger(__name__)
#: Messages ``publish_many`` prepares and sends together.
BATCH = 500


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


def envelope(message: EncodedMessage, exchange: str, routing_key: str, properties: dict[str, Any],
             headers: dict[str, Any] | None = None) -> dict:
    """The message as kombu's virtual transports store it (``prepare_message`` + ``basic_publish``),
    built directly: the same JSON a kombu ``Producer`` would have written. ``headers``: instead of the
    message's own."""
    body = message.payload.encode(message.content_encoding or "utf-8") if isinstance(message.payload, str) \
        else message.payload
    return {
        "body": b64encode(body).decode(),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": (message.headers if headers is None else headers) or {},
        "properties": {**properties, "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                       "priority": properties.get("priority") or 0, "body_encoding": "base64",
                       "delivery_tag": new_id()},
    }


#: The headers in which the messages of one ``apply_async_many()`` differ (with the body).
OWN_HEADERS = ("id", "root_id", "argsrepr", "kwargsrepr")


def envelope_texts(batch: list[tuple[EncodedMessage, str, float | None]], exchange: str, routing_key: str,
                   route: Route, like: EncodedMessage | None = None) -> list[str]:
    """What ``json.dumps(envelope(...))`` writes for each message, for messages that share every header
    but :data:`OWN_HEADERS` with ``like`` (default: the first): the shared headers and properties are
    encoded once, so each message costs its body, its id and its delivery tag. (Readers parse the
    JSON: key order does not matter.)"""
    head, middle = _shared_json(like or batch[0][0], exchange, routing_key, route)
    texts = []
    string = encode_basestring_ascii  # a str as JSON, as json.dumps writes it (quotes, escapes, ASCII)
    for (message, task_id, _), tag in zip(batch, new_ids(len(batch))):
        headers = message.headers
        payload = message.payload
        body = b64encode(payload.encode(message.content_encoding or "utf-8") if isinstance(payload, str)
                         else payload).decode()
        texts.append(f'{head}"id": {string(headers["id"])}, "root_id": {string(headers["root_id"])}, '
                     f'"argsrepr": {string(headers["argsrepr"])}, "kwargsrepr": {string(headers["kwargsrepr"])}'
                     f'{middle}{task_id}", "delivery_tag": "{tag}"}}, "body": "{body}"}}')
    return texts


def _texts(channel: Any, batch: list[tuple[EncodedMessage, str, float | None]], exchange: str, routing_key: str,
           route: Route, like: EncodedMessage | None = None) -> list[tuple[str, int]]:
    """:func:`envelope_texts` with the priority the channel files them under, for ``put_encoded``."""
    priority = channel._get_message_priority({"properties": {"priority": route.priority or 0}})
    return [(text, priority) for text in envelope_texts(batch, exchange, routing_key, route, like)]


#: (id of the message, exchange, routing key, route) -> (that message, head, middle) of its envelopes
_shared_cache: dict[tuple[int, str, str, Route], tuple[EncodedMessage, str, str]] = {}


def _shared_json(first: EncodedMessage, exchange: str, routing_key: str, route: Route) -> tuple[str, str]:
    """The JSON of the envelope around the parts of a message that differ (see :func:`envelope_texts`),
    remembered for the last few messages used as a model (one per task sent with ``delay()``)."""
    key = (id(first), exchange, routing_key, route)
    hit = _shared_cache.get(key)
    if hit is not None and hit[0] is first:
        return hit[1], hit[2]
    shared = {name: value for name, value in first.headers.items() if name not in OWN_HEADERS}
    properties = {key: value for key, value in envelope(first, exchange, routing_key,
                                                        _properties("", route, None))["properties"].items()
                  if key not in ("correlation_id", "delivery_tag")}
    head = (f'{{"content-encoding": {json.dumps(first.content_encoding)}, '
            f'"content-type": {json.dumps(first.content_type)}, "headers": {{{json.dumps(shared)[1:-1]}, ')
    middle = f'}}, "properties": {{{json.dumps(properties)[1:-1]}, "correlation_id": "'
    if len(_shared_cache) >= 256:
        _shared_cache.clear()
    _shared_cache[key] = (first, head, middle)
    return head, middle


def _direct_channel(state: Any, queue_name: str) -> Any:
    """The Redis channel that takes prepared messages itself, once ``queue_name`` is declared; else None."""
    if queue_name not in state.declared:
        return None  # the first send goes through kombu, which declares the queue and its binding
    channel = state.producer.channel  # resolved by that first send: no connection check per message
    return channel if hasattr(channel, "put_messages") else None


def _put(channel: Any, queue: Any, exchange: str, routing_key: str, prepared: list, *,
         encoded: bool = False) -> int | None:
    """``channel.put_messages``, declaring ``queue`` again when no binding routes the messages.

    On Redis a queue's binding lives in the server: after a FLUSHALL, or a
    restart without persistence, kombu would route a publish to nothing and
    drop it without a word. Declaring the queue restores the binding; a route
    that still reaches no queue is refused with the reason.
    """
    put = channel.put_encoded if encoded else channel.put_messages
    routed = put(exchange, routing_key, prepared)
    if routed == 0:
        logger.warning("no binding routes exchange %r, routing key %r on the broker (did Redis lose its data?); "
                       "declaring queue %r again", exchange, routing_key, queue.name)
        queue(channel).declare()  # a queue this process never declared on this channel
        channel.restore_bindings(queue.name)  # one it did: kombu remembers that, and declares nothing
        routed = put(exchange, routing_key, prepared)
        if routed == 0:
            raise ImproperlyConfigured(
                f"no queue is bound to exchange {exchange!r} with routing key {routing_key!r}, even after "
                f"declaring queue {queue.name!r} ({describe_queue(queue)}): the task would be lost")
    return routed


def _properties(task_id: str, route: Route, reply_to: str | None) -> dict[str, Any]:
    properties: dict[str, Any] = {"correlation_id": task_id, "delivery_mode": 2}
    if reply_to:
        properties["reply_to"] = reply_to
    if route.priority is not None:
        properties["priority"] = route.priority
    return properties


def _observed() -> bool:
    """Does anyone listen to ``before_task_publish`` / ``after_task_publish``? (Checked per send: cheap.)"""
    return bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)


def publish_many(messages: list[tuple[EncodedMessage, str, float | None]], route: Route, *,
                 shared_headers: bool = False) -> None:
    """Publish ``(message, task id, deliver_at)`` items to one route, in as few round trips as the broker allows.

    On Redis, messages go out pipelined (a thousand commands per round trip),
    on ``django://`` in multi-row INSERTs, parked ones (an eta) included; on
    RabbitMQ a batch at a time with its confirms read after it
    (:mod:`~django_tasks_q.broker.amqp_confirms`); parked messages on Redis
    and RabbitMQ, and every message while publish signals have receivers,
    one by one through :func:`publish`. A broker failure part-way raises
    ``BrokerUnavailable`` saying how many were sent (those before it in the
    list; on RabbitMQ, how many of the failed batch were confirmed).

    ``shared_headers``: the messages differ in no header but :data:`OWN_HEADERS`
    (one ``apply_async_many()``), so on Redis the JSON of the rest is written
    once per batch (:func:`envelope_texts`).
    """
    if not messages:
        return
    first, task_id, first_at = messages[0]
    publish(first, route, task_id=task_id, deliver_at=first_at)  # declares the queue; checks the route
    queue = get_queue(route.queue)
    exchange = route.exchange if route.exchange is not None else queue.exchange.name
    routing_key = route.routing_key or queue.routing_key
    sent = 1
    rest = messages[1:]
    while rest:
        batch, rest = rest[:BATCH], rest[BATCH:]
        state = connection.current()
        channel = _direct_channel(state, queue.name)
        prepared: list | None = None
        parked = any(at is not None for _, _, at in batch)
        observed = _observed()
        copied = shared_headers and not parked and hasattr(channel, "put_encoded")
        if channel is not None and not observed and (not parked or delayed.parks_by_header(state.connection)):
            if copied:
                prepared = _texts(channel, batch, exchange, routing_key, route)
            else:  # a parked message carries its time in a header; put_messages may take it or decline (None)
                prepared = [envelope(message, exchange, routing_key, _properties(task_id, route, None),
                                     headers=None if at is None else {**message.headers, delayed.PARK_HEADER: at})
                            for message, task_id, at in batch]
        if prepared is None and not parked and not observed and state.connection.transport.driver_type == "amqp":
            sent += _confirmed_batch(state, batch, route, exchange, routing_key, sent, len(messages))
            continue
        try:
            routed = None if prepared is None else _put(channel, queue, exchange, routing_key, prepared,
                                                        encoded=copied)
            if not routed:
                for message, task_id, at in batch:
                    publish(message, route, task_id=task_id, deliver_at=at)
                    sent += 1
                continue
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(f"{exc} ({sent} of {len(messages)} messages were sent, in order)") from exc
        except (OperationalError, OSError, *state.connection.connection_errors) as exc:
            connection.reset()
            raise _unsent(first, f"{exc} ({sent} of {len(messages)} messages were sent, in order)") from exc
        sent += len(batch)


def _confirmed_batch(state: Any, batch: list[tuple[EncodedMessage, str, float | None]], route: Route, exchange: str,
                     routing_key: str, sent: int, total: int) -> int:
    """RabbitMQ: ``batch`` published with its confirms pipelined (broker/amqp_confirms.py); how many."""
    from . import amqp_confirms

    outgoing = [(message.payload, message.content_type, message.content_encoding, message.headers,
                 _properties(task_id, route, None)) for message, task_id, _ in batch]
    try:
        return amqp_confirms.publish_confirmed(state.connection, outgoing, exchange, routing_key,
                                               timeout=settings.BROKER_CONNECTION_TIMEOUT * 10)
    except amqp_confirms.Refused as exc:
        raise _unsent(batch[0][0], f"{exc} ({sent} of {total} messages were sent before this batch of "
                                   f"{len(batch)})") from exc
    except (OperationalError, OSError, *state.connection.connection_errors, *state.connection.channel_errors) as exc:
        connection.reset()
        raise _unsent(batch[0][0], f"{exc} ({sent} of {total} messages were sent, in order; of the next "
                                   f"{len(batch)}, published with their confirms read after them, any may or may "
                                   "not have been queued)") from exc


def _unsent(first: EncodedMessage, detail: str) -> BrokerUnavailable:
    """A bulk send that failed part-way: the task, the masked broker URL, and ``detail`` (what was sent)."""
    return BrokerUnavailable(f"could not send tasks {first.headers.get('task')} to "
                             f"{connection.mask_url(settings.BROKER_URL)}: {detail}")


def publish(message: EncodedMessage, route: Route, *, task_id: str, reply_to: str | None = None,
            deliver_at: float | None = None, like: EncodedMessage | None = None) -> None:
    """Publish to ``route``; raise ``BrokerUnavailable`` (never hang) if the broker is down.

    ``deliver_at`` (epoch seconds) parks the message in the broker's delayed
    store until then (:mod:`django_tasks_q.broker.delayed`). ``like``: an
    earlier message this one differs from only in :data:`OWN_HEADERS` and its
    body, so that on Redis the JSON they share is not written again.
    """
    queue = get_queue(route.queue)
    if route.priority is not None:
        check_priority(route.priority, queue, settings.BROKER_URL)
    properties = _properties(task_id, route, reply_to)
    state = connection.current()
    exchange = route.exchange if route.exchange is not None else queue.exchange.name
    routing_key = route.routing_key or queue.routing_key
    headers = message.headers
    observed = _observed()
    if observed:
        signals.send(signals.before_task_publish, sender=headers.get("task"), body=message.payload,
                     exchange=exchange, routing_key=routing_key, headers=headers, properties=properties,
                     declare=[] if queue.name in state.declared else [queue], retry_policy=state.retry_policy)
    if deliver_at is None:
        channel = _direct_channel(state, queue.name)
        if channel is not None:
            try:
                # with publish signals observed, a receiver may have changed this message's headers
                copied = like is not None and reply_to is None and not observed and hasattr(channel, "put_encoded")
                if copied:
                    prepared: list = _texts(channel, [(message, task_id, None)], exchange, routing_key, route, like)
                else:
                    prepared = [envelope(message, exchange, routing_key, properties)]
                if _put(channel, queue, exchange, routing_key, prepared, encoded=copied):
                    if observed:
                        _published(message, exchange, routing_key)
                    return
            except state.connection.connection_errors:
                connection.reset()  # kombu's path below reconnects and retries within the policy
                state = connection.current()
            except state.connection.channel_errors as exc:  # e.g. django://'s Unroutable
                raise _refused(message, task_id, queue, exc) from exc
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
        if observed:
            _published(message, exchange, routing_key)
    except state.connection.channel_errors as exc:  # e.g. RabbitMQ's PRECONDITION_FAILED on a re-declare
        connection.reset()  # the broker closed the channel: start clean next time
        raise _refused(message, task_id, queue, exc) from exc
    except (OperationalError, OSError) as exc:
        connection.reset()
        url = connection.mask_url(settings.BROKER_URL)
        raise BrokerUnavailable(
            f"could not send task {message.headers.get('task')} [{task_id}] to {url} "
            f"after {settings.BROKER_PUBLISH_RETRIES} retries: {exc}"
        ) from exc


def _refused(message: EncodedMessage, task_id: str, queue: Any, exc: BaseException) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"could not send task {message.headers.get('task')} [{task_id}] to queue "
                                f"{queue.name!r} ({describe_queue(queue)}): the broker refused it: {exc}")


def _published(message: EncodedMessage, exchange: str, routing_key: str) -> None:
    signals.send(signals.after_task_publish, sender=message.headers.get("task"), body=message.payload,
                 exchange=exchange, routing_key=routing_key, headers=message.headers)
