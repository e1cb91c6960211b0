"""From a raw broker message to a ``Job``, or a clear refusal.

Every refusal -- undecodable body, refused content type, missing or bad
signature, unknown task name -- is logged with the task id and name, sent as
the ``task_rejected`` signal and rejected without requeue. Nothing is
executed and the worker goes on. When the message names a task id it is
recorded as FAILURE with the reason, so a caller waiting on ``get()`` hears
why instead of hanging -- except for signature failures: an unsigned or
forged message must not be able to write results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import ContentDisallowed, DecodeError

from .. import signals
from ..conf import settings
from ..core.protocol import TaskMessage, verify
from ..core.registry import registry
from ..core.states import TaskState
from ..exceptions import InvalidMessage, InvalidSignature, NotRegistered
from ..results.backend import describe_exception, get_backend
from .pools.base import Job

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """The settings intake needs, read once by the worker instead of once per message."""

    signing_key: str | None
    acks_late: bool

    @classmethod
    def from_settings(cls) -> "Policy":
        return cls(signing_key=settings.SIGNING_KEY, acks_late=settings.ACKS_LATE)


def read(kombu_message: Any, queue: str, policy: Policy | None = None) -> Job | None:
    """Decode and check one message; ``None`` means it was refused (and already rejected)."""
    policy = policy or Policy.from_settings()
    headers = kombu_message.headers or {}
    try:
        if policy.signing_key:
            verify(policy.signing_key, headers, kombu_message.body)
        body = kombu_message.decode()
        message = TaskMessage.from_wire(headers, body)
        task = registry[message.task]
    except (InvalidMessage, NotRegistered, ContentDisallowed, DecodeError) as exc:
        refuse(kombu_message, headers, exc)
        return None
    info = kombu_message.delivery_info or {}
    delivery_info = {
        "exchange": info.get("exchange"),
        "routing_key": info.get("routing_key"),
        "queue": queue,
        "priority": kombu_message.properties.get("priority"),
        "redelivered": bool(info.get("redelivered")),
    }
    acks_late = task.options.acks_late if task.options.acks_late is not None else policy.acks_late
    return Job(message=message, delivery_info=delivery_info, acks_late=acks_late, kombu_message=kombu_message)


def refuse(kombu_message: Any, headers: dict, exc: BaseException) -> None:
    name, task_id = headers.get("task"), headers.get("id")
    logger.error("refused message %s[%s] (content type %s): %s", name or "<no task name>", task_id or "<no id>",
                 getattr(kombu_message, "content_type", None), exc)
    try:
        signals.task_rejected.send(sender=name, message=kombu_message, reason=exc)
    except Exception:
        logger.exception("task_rejected receiver raised")
    if task_id and not isinstance(exc, InvalidSignature):
        try:
            get_backend().mark(str(task_id), TaskState.FAILURE, result=describe_exception(exc),
                               task_name=str(name or ""))
        except Exception:
            logger.exception("could not record the refusal of %s", task_id)
    try:
        kombu_message.reject(requeue=False)
    except Exception:
        logger.exception("could not reject message %s", task_id)
