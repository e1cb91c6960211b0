"""kombu ``Queue`` declarations from names, ``Queue`` rows and the ``QUEUES`` setting.

A queue nobody configured is declared the way Celery declares it: a durable
direct exchange of the same name bound with the queue's name as routing key,
so a Celery worker consuming ``videos`` and ours see the same queue.
"""

from __future__ import annotations

from functools import lru_cache

from kombu import Exchange, Queue

from ..conf import settings
from ..exceptions import ImproperlyConfigured

QUEUE_KEYS = {"exchange", "exchange_type", "routing_key", "max_priority", "durable"}


def build_queue(name: str, spec: dict | None = None) -> Queue:
    spec = dict(spec or {})
    unknown = set(spec) - QUEUE_KEYS
    if unknown:
        raise ImproperlyConfigured(
            f"TASKS_Q['QUEUES'][{name!r}] has unknown keys {sorted(unknown)}; known: {sorted(QUEUE_KEYS)}"
        )
    durable = spec.get("durable", True)
    exchange = Exchange(spec.get("exchange") or name, type=spec.get("exchange_type", "direct"), durable=durable)
    arguments = {"x-max-priority": spec["max_priority"]} if spec.get("max_priority") else None
    return Queue(name, exchange, routing_key=spec.get("routing_key") or name, durable=durable,
                 queue_arguments=arguments)


@lru_cache(maxsize=256)
def _cached_queue(name: str, spec_key: tuple) -> Queue:
    return build_queue(name, dict(spec_key))


def get_queue(name: str) -> Queue:
    """The declaration for ``name``: its ``Queue`` row, else ``TASKS_Q["QUEUES"]``, else Celery's default."""
    from ..core.routing import route_table

    spec = route_table().queues.get(name) or (settings.QUEUES or {}).get(name) or {}
    return _cached_queue(name, tuple(sorted(spec.items())))


def describe_queue(queue: Queue) -> str:
    """The declaration in words, for errors about it."""
    return (f"exchange {queue.exchange.name!r} ({queue.exchange.type}), routing key {queue.routing_key!r}, "
            f"arguments {queue.queue_arguments or {}}")  # type: ignore[attr-defined, unused-ignore]  # kombu sets it from attrs


def consumer_queue(name: str, hostname: str) -> Queue:
    """What a worker consumes for ``-Q name``.

    A fanout (broadcast) queue must deliver one copy to every worker, so each
    worker consumes a queue of its own, ``name@hostname``, bound to the fanout
    exchange and deleted when the worker goes away -- as Celery's
    ``Broadcast`` queues do. Other queues are shared by their workers.
    """
    queue = get_queue(name)
    if queue.exchange.type != "fanout":
        return queue
    return Queue(f"{name}@{hostname}", queue.exchange, routing_key=queue.routing_key, durable=False,
                 auto_delete=True)
