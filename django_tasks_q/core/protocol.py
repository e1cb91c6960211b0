"""Celery task protocol v2: the one place messages are built and read.

A message is kombu headers + a body ``[args, kwargs, embed]`` where
``embed = {"callbacks", "errbacks", "chain", "chord"}``; ``correlation_id``
is the task id. Celery clients and workers read and write exactly this
(https://docs.celeryq.dev/en/stable/internals/protocol.html), which is what
lets mixed fleets work. ``TaskMessage`` is an immutable value: build it with
``TaskMessage(...)``, change it with ``dataclasses.replace``, read one off
the wire with ``TaskMessage.from_wire`` which raises ``InvalidMessage``.

Signing a message is :mod:`.message_signing`; its public names
(``SIGNATURE_HEADER``, ``sign_headers``, ``verify`` ...) are importable from
here too.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, TypeGuard

from kombu.serialization import dumps
from kombu.utils.json import loads as kombu_loads

from ..exceptions import EncodeError, InvalidMessage
from .message_signing import SIGNATURE_HEADER, SIGNED_AT_HEADER, sign_headers
from .message_signing import SIGNING_PURPOSE as SIGNING_PURPOSE
from .message_signing import legacy_signature as legacy_signature
from .message_signing import signed_data as signed_data
from .message_signing import verify as verify
from .signing import signing_keys as signing_keys
from .wire_values import parse_datetime
from .wire_values import short_repr as _repr

ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"

def new_id() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())`` at a fifth of the cost: ids are made
    twice per message sent (task id, delivery tag), so ``uuid.UUID``'s checks showed in profiles."""
    return _uuid_text(os.urandom(16))


def new_ids(count: int) -> list[str]:
    """``count`` ids from one read of the system's random source (a bulk send makes two per message)."""
    raw = os.urandom(16 * count)
    return [_uuid_text(raw[start:start + 16]) for start in range(0, 16 * count, 16)]


def _uuid_text(random16: bytes) -> str:
    raw = bytearray(random16)
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def fast_json(value: Any) -> str | None:
    """``value`` as JSON by the standard library's C encoder, or ``None`` when it holds a type only kombu's
    encoder knows (datetime, Decimal, UUID ...). Same text as kombu's ``dumps`` for plain values.

    ``json.dumps`` builds a new C encoder on every call, which for the small
    values of a task message costs more than the encoding; each thread keeps
    one here (its circular-reference bookkeeping is per encoder, so per thread).
    """
    encoder = getattr(_json_encoders, "encoder", None)
    if encoder is None:
        encoder = _json_encoders.encoder = _new_json_encoder()
    try:
        return "".join(encoder(value, 0))
    except TypeError:
        _json_encoders.encoder = None  # its bookkeeping may hold entries from the failed call
        return None
    except ValueError:  # a circular reference: json.dumps says so in its words
        _json_encoders.encoder = None
        return json.dumps(value)


def _unknown_type(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _new_json_encoder() -> Callable[[Any, int], Any]:
    if c_make_encoder is None:  # not CPython: the standard library's own path
        return lambda value, _level: (json.dumps(value),)
    return c_make_encoder({}, _unknown_type, encode_basestring_ascii, None, ": ", ", ", False, False, True)


_json_encoders = threading.local()


def fast_loads(text: str | bytes) -> Any:
    """JSON ``text`` decoded by the standard library's C decoder, or by kombu's when it holds a value only
    kombu's encoder writes (``{"__type__": "datetime", ...}``). Same result as kombu's ``loads``: its
    object hook changes nothing else, and costs a Python call per object (a new decoder per call, too)."""
    marker = b"__type__" if isinstance(text, bytes) else "__type__"
    if marker in text:  # type: ignore[operator]  # bytes in bytes, str in str
        return kombu_loads(text)
    return json.loads(text)


def _args_repr(args: tuple | list) -> str:
    return "()" if not args else _repr.repr(tuple(args))


def _kwargs_repr(kwargs: dict) -> str:
    return "{}" if not kwargs else _repr.repr(kwargs)


#: The longest task id and task name a worker reads: what ``TaskResult`` stores.
MAX_NAME_LENGTH = 255
#: An ``eta`` further ahead than this is refused, not held for ever: no real
#: schedule is this far out, and a worker (or broker) holding it would pin it.
MAX_ETA_AHEAD = timedelta(days=3650)


def usable_id(value: Any) -> TypeGuard[str]:
    """True for a task id results can be stored under: a printable string of 1-255 characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH and value.isprintable()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def absolute_time(seconds_or_datetime: float | datetime | None, now: datetime) -> datetime | None:
    """``expires=120`` or ``countdown=10`` as an aware datetime from ``now``."""
    if seconds_or_datetime is None:
        return None
    if isinstance(seconds_or_datetime, datetime):
        value = seconds_or_datetime
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return now + timedelta(seconds=seconds_or_datetime)


@dataclass(frozen=True)
class TaskMessage:
    """One task invocation as it travels: protocol v2 headers and body."""

    id: str
    task: str
    args: tuple | list = ()
    kwargs: dict = field(default_factory=dict)
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    ignore_result: bool = False
    callbacks: list | None = None
    errbacks: list | None = None
    chain: list | None = None
    chord: dict | None = None
    origin: str | None = None
    reply_to: str | None = None
    extra_headers: dict = field(default_factory=dict)

    # -- writing -------------------------------------------------------
    def headers(self) -> dict[str, Any]:
        return {
            **self.extra_headers,
            "lang": "py",
            "task": self.task,
            "id": self.id,
            "shadow": None,
            "eta": _iso(self.eta),
            "expires": _iso(self.expires),
            "group": self.group_id,
            "group_index": self.group_index,
            "retries": self.retries,
            "timelimit": [self.time_limit, self.soft_time_limit],
            "root_id": self.root_id or self.id,
            "parent_id": self.parent_id,
            "argsrepr": _args_repr(self.args),
            "kwargsrepr": _kwargs_repr(self.kwargs),
            "origin": self.origin or ORIGIN,
            "ignore_result": self.ignore_result,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }

    def body(self) -> list:
        embed = {"callbacks": self.callbacks, "errbacks": self.errbacks, "chain": self.chain, "chord": self.chord}
        return [list(self.args), dict(self.kwargs), embed]

    def encode(self, serializer: str = "json", signing_key: str | bytes | None = None) -> "EncodedMessage":
        """Serialise now, so unserialisable arguments fail before anything is sent; with ``signing_key``,
        sign it (:func:`sign_headers`) as of now."""
        body = self.body()
        payload = fast_json(body) if serializer == "json" else None
        try:
            if payload is not None:
                content_type, content_encoding = "application/json", "utf-8"
            else:
                content_type, content_encoding, payload = dumps(body, serializer=serializer)
        except Exception as exc:  # kombu raises its own EncodeError wrapping the cause
            cause = exc.__cause__ or exc
            raise EncodeError(
                f"arguments of task {self.task!r} (id {self.id}) cannot be serialised with {serializer!r}: "
                f"{type(cause).__name__}: {cause}; nothing was sent"
            ) from exc
        if content_type == "application/json" and ("NaN" in payload or "Infinity" in payload):
            _refuse_non_finite(self, payload)
        headers = self.headers()
        if signing_key:
            headers = sign_headers(signing_key, headers, payload, content_type, content_encoding)
        return EncodedMessage(headers, payload, content_type, content_encoding)

    def sibling_encoder(self, first: "EncodedMessage") -> Callable[[str, tuple | list, dict], "EncodedMessage | None"]:
        """What :meth:`encode` would make for this call with another id and arguments, built from ``first``
        (this message, encoded as JSON and unsigned): one ``apply_async_many()`` sends thousands that
        differ in nothing else, so the parts they share are encoded once. The encoder returns ``None``
        when the arguments need the full path (a type only kombu's encoder knows, NaN or Infinity)."""
        embed = fast_json({"callbacks": self.callbacks, "errbacks": self.errbacks, "chain": self.chain,
                           "chord": self.chord})
        root_id = self.root_id

        def encode(task_id: str, args: tuple | list, kwargs: dict) -> "EncodedMessage | None":
            encoded_args, encoded_kwargs = fast_json(list(args)), fast_json(kwargs)
            if embed is None or encoded_args is None or encoded_kwargs is None:
                return None
            payload = f"[{encoded_args}, {encoded_kwargs}, {embed}]"
            if "NaN" in payload or "Infinity" in payload:
                return None
            headers = {**first.headers, "id": task_id, "root_id": root_id or task_id,
                       "argsrepr": _args_repr(args), "kwargsrepr": _kwargs_repr(kwargs)}
            return EncodedMessage(headers, payload, first.content_type, first.content_encoding)

        return encode

    # -- reading -------------------------------------------------------
    @classmethod
    def from_wire(cls, headers: dict[str, Any] | None, body: Any) -> "TaskMessage":
        """Build a message from decoded kombu headers and body, or raise ``InvalidMessage``."""
        headers = {} if headers is None else headers
        if not isinstance(headers, dict):
            raise InvalidMessage(f"message headers must be a mapping, got {type(headers).__name__}")
        name, task_id = headers.get("task"), headers.get("id")
        if not name or not task_id:
            if isinstance(body, dict) and "task" in body:
                raise InvalidMessage(
                    f"task protocol 1 message (task {_repr.repr(body.get('task'))}, id {_repr.repr(body.get('id'))}"
                    "): only protocol 2 is read; send with Celery >= 4 or django-tasks-q")
            raise InvalidMessage(
                "not a task protocol v2 message: headers 'task' and 'id' are required "
                f"(got headers {_repr.repr(sorted(map(str, headers)))})"
            )
        if not usable_id(task_id):
            raise InvalidMessage(f"header 'id' must be a printable string of 1-{MAX_NAME_LENGTH} characters, "
                                 f"got {_repr.repr(task_id)}")
        if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise InvalidMessage(f"task [{task_id}]: header 'task' must be a printable string of 1-"
                                 f"{MAX_NAME_LENGTH} characters, got {_repr.repr(name)}")
        if not isinstance(body, (list, tuple)) or len(body) != 3:
            raise InvalidMessage(f"task {name} [{task_id}]: body must be [args, kwargs, embed], got {_repr.repr(body)}")
        args, kwargs, embed = body
        if (not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict)
                or not isinstance(embed, (dict, type(None)))):
            raise InvalidMessage(f"task {name} [{task_id}]: body must be [list, dict, dict], got {_repr.repr(body)}")
        embed = embed or {}
        for key, kind in (("callbacks", list), ("errbacks", list), ("chain", list), ("chord", dict)):
            if not isinstance(embed.get(key), (kind, type(None))):
                raise InvalidMessage(f"task {name} [{task_id}]: embed {key!r} must be a {kind.__name__} or null, "
                                     f"got {_repr.repr(embed.get(key))}")
        limits = headers.get("timelimit") or (None, None)
        if not isinstance(limits, (list, tuple)) or len(limits) != 2:
            raise InvalidMessage(f"task {name} [{task_id}]: header 'timelimit' must be [hard, soft], got {limits!r}")
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 and v >= 0) for v in limits):
            raise InvalidMessage(f"task {name} [{task_id}]: header 'timelimit' must hold numbers or null (finite, "
                                 f"not negative), got {limits!r}")
        retries = headers.get("retries") or 0
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidMessage(f"task {name} [{task_id}]: header 'retries' must be an integer (not negative), "
                                 f"got {_repr.repr(retries)}")
        eta = parse_datetime(headers.get("eta"), "eta")
        if eta is not None and eta - datetime.now(timezone.utc) > MAX_ETA_AHEAD:
            raise InvalidMessage(f"task {name} [{task_id}]: header 'eta' {eta.isoformat()} is more than "
                                 f"{MAX_ETA_AHEAD.days} days ahead; refused rather than held for ever")
        known = {"lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
                 "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
                 "replaced_task_nesting", "stamped_headers", "stamps", SIGNATURE_HEADER, SIGNED_AT_HEADER}
        return cls(
            id=str(task_id),
            task=str(name),
            args=tuple(args),
            kwargs=kwargs,
            eta=eta,
            expires=parse_datetime(headers.get("expires"), "expires"),
            retries=retries,
            time_limit=limits[0],
            soft_time_limit=limits[1],
            root_id=headers.get("root_id"),
            parent_id=headers.get("parent_id"),
            group_id=headers.get("group"),
            group_index=headers.get("group_index"),
            ignore_result=bool(headers.get("ignore_result")),
            callbacks=embed.get("callbacks"),
            errbacks=embed.get("errbacks"),
            chain=embed.get("chain"),
            chord=embed.get("chord"),
            origin=headers.get("origin"),
            extra_headers={k: v for k, v in headers.items() if k not in known},
        )


@dataclass(frozen=True)
class EncodedMessage:
    headers: dict[str, Any]
    payload: bytes | str
    content_type: str
    content_encoding: str


def _refuse_non_finite(message: "TaskMessage", payload: str) -> None:
    """NaN and Infinity are not JSON: workers refuse such a body, so refuse it before sending."""

    def refuse(constant: str) -> None:
        raise EncodeError(f"arguments of task {message.task!r} (id {message.id}) contain {constant}, which JSON "
                          "cannot carry; nothing was sent")

    json.loads(payload, parse_constant=refuse)
