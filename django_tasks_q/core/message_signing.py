"""Signing task messages: what a signature covers, writing it, and checking it on intake.

A signed message carries ``x-tasks-q-signature`` (an HMAC, :mod:`.signing`)
over the canonical bytes of everything that decides what runs, when and how
(:func:`signed_data`), and ``x-tasks-q-signed-at``, the signing time, so a
worker can refuse a stale message (``SIGNING_MAX_AGE``). ``SIGNING_KEY`` may
hold several keys: the first signs, every one verifies (:func:`.signing.signing_keys`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..exceptions import InvalidMessage, InvalidSignature
from . import signing
from .wire_values import parse_datetime, short_repr

SIGNATURE_HEADER = "x-tasks-q-signature"
#: when the message was signed, in whole seconds since the epoch (signed with the rest)
SIGNED_AT_HEADER = "x-tasks-q-signed-at"
#: the first field of what is signed: a signature of one kind of message never verifies another kind
SIGNING_PURPOSE = "django-tasks-q task message v2"


def _body_bytes(payload: bytes | str | None, content_encoding: str | None) -> bytes:
    """The body as the bytes that travelled (some clients, py-amqp, hand a text body over decoded)."""
    if payload is None:
        return b""
    if isinstance(payload, str):
        try:
            return payload.encode(content_encoding or "utf-8")
        except (LookupError, UnicodeError):
            return payload.encode("utf-8", "surrogatepass")
    return bytes(payload)


_TEXT_HEADERS = ("id", "task", "eta", "expires", "group", "root_id", "parent_id")


def signed_data(headers: dict[str, Any], payload: bytes | str | None, content_type: str | None,
                content_encoding: str | None) -> bytes:
    """The canonical bytes a task message's signature covers (:func:`~.signing.canonical`).

    Everything that decides what runs, when and how: the task id and name,
    content type and encoding, the body bytes (args, kwargs and the embed:
    callbacks, errbacks, chain, chord), ``eta``, ``expires``, both time
    limits, ``retries``, ``group``, ``group_index``, ``root_id``,
    ``parent_id``, ``ignore_result`` and the signing time. Read from the
    headers as they travel, so sender and worker compute it alike. A header
    of a type no sender of ours writes raises ``InvalidSignature``.
    """
    fields: list[Any] = [SIGNING_PURPOSE]
    for name in _TEXT_HEADERS[:2]:
        fields.append(_signed_value(headers, name, (str,)))
    fields += [_signed_value({"t": content_type}, "t", (str, type(None))),
               _signed_value({"e": content_encoding}, "e", (str, type(None))),
               _body_bytes(payload, content_encoding)]
    for name in _TEXT_HEADERS[2:]:
        fields.append(_signed_value(headers, name, (str, type(None))))
    limits = headers.get("timelimit")
    if limits is None:
        limits = (None, None)
    if not isinstance(limits, (list, tuple)) or len(limits) != 2 or not all(
            limit is None or (isinstance(limit, (int, float)) and not isinstance(limit, bool)) for limit in limits):
        raise InvalidSignature(f"header 'timelimit' cannot have been signed: {short_repr.repr(limits)}")
    fields += [None if limit is None else float(limit) for limit in limits]
    fields.append(_signed_value(headers, "retries", (int, type(None))))
    fields.append(_signed_value(headers, "group_index", (int, type(None))))
    fields.append(bool(headers.get("ignore_result")))
    fields.append(_signed_value(headers, SIGNED_AT_HEADER, (int, float)))
    return signing.canonical(fields)


def _signed_value(headers: dict[str, Any], name: str, kinds: tuple[type, ...]) -> Any:
    value = headers.get(name)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidSignature(f"header {name!r} cannot have been signed: {short_repr.repr(value)}")
    return value


def sign_headers(key: str | bytes, headers: dict[str, Any], payload: bytes | str, content_type: str | None,
                 content_encoding: str | None, signed_at: int | None = None) -> dict[str, Any]:
    """``headers`` with a signing time (now unless given) and the signature of the message under ``key``.

    Also how a person re-sends a dead letter they have checked: dead letters
    carry no signature, so a copy must be signed anew with a current key.
    """
    headers = {**headers, SIGNED_AT_HEADER: int(time.time()) if signed_at is None else signed_at}
    headers.pop(SIGNATURE_HEADER, None)
    raw_key = key.encode() if isinstance(key, str) else key
    headers[SIGNATURE_HEADER] = signing.sign(raw_key, signed_data(headers, payload, content_type, content_encoding))
    return headers


def _legacy_data(task_id: str, payload: bytes | str | None) -> bytes:
    return task_id.encode("utf-8", "surrogatepass") + b"\0" + _body_bytes(payload, None)


def legacy_signature(key: str | bytes, task_id: str, payload: bytes | str) -> str:
    """The signature earlier releases wrote (HMAC over ``id + NUL + body`` only, no time): read only when
    ``SIGNING_ACCEPT_LEGACY`` is on, during a rolling upgrade; never written."""
    raw_key = key.encode() if isinstance(key, str) else key
    return signing.sign(raw_key, _legacy_data(task_id, payload))


def verify(keys: str | bytes | tuple[str | bytes, ...], headers: dict[str, Any], payload: bytes | str | None,
           content_type: str | None = "application/json", content_encoding: str | None = "utf-8", *,
           max_age: float | None = None, accept_legacy: bool = False, now: float | None = None) -> None:
    """Raise ``InvalidSignature`` unless the message is signed with one of ``keys`` and not stale.

    Total: whatever the headers hold (a signature that is not 64 hex digits,
    non-ASCII, another type; a signed header of the wrong type), the outcome
    is ``InvalidSignature`` or nothing. ``max_age`` (seconds, ``None``: no
    limit) bounds how long a signed message stays good: it is stale when
    more than ``max_age`` has passed since it was signed *and* since its
    ``eta`` (both signed), so a task scheduled a year out runs when due but a
    captured message cannot be replayed later. ``accept_legacy`` also takes
    the old signature (id and body only, no time) -- see :func:`legacy_signature`.
    """
    keys = (keys,) if isinstance(keys, (str, bytes)) else tuple(keys)
    raw_keys = tuple(key.encode() if isinstance(key, str) else bytes(key) for key in keys if key)
    headers = headers if isinstance(headers, dict) else {}
    given = headers.get(SIGNATURE_HEADER)
    task = f"{_label(headers.get('task'))} [{_label(headers.get('id'))}]"
    if given is None or given == "":
        raise InvalidSignature(f"task {task}: unsigned message refused (SIGNING_KEY is set)")
    if SIGNED_AT_HEADER not in headers and accept_legacy:
        task_id = headers.get("id")
        if isinstance(task_id, str) and signing.matches(raw_keys, _legacy_data(task_id, payload), given):
            return
        raise InvalidSignature(f"task {task}: bad signature (old format, matches none of the {len(raw_keys)} "
                               "accepted SIGNING_KEY key(s)), message refused")
    try:
        data = signed_data(headers, payload, content_type, content_encoding)
    except InvalidSignature as exc:
        raise InvalidSignature(f"task {task}: bad signature ({exc}), message refused") from None
    if not signing.matches(raw_keys, data, given):
        raise InvalidSignature(f"task {task}: bad signature (matches none of the {len(raw_keys)} accepted "
                               f"SIGNING_KEY key(s)), message refused")
    if max_age is not None:
        _check_age(task, headers, max_age, time.time() if now is None else now)


def _check_age(task: str, headers: dict[str, Any], max_age: float, now: float) -> None:
    signed_at = float(headers[SIGNED_AT_HEADER])
    if not math.isfinite(signed_at):
        raise InvalidSignature(f"task {task}: signing time {signed_at} is not a time")
    try:
        eta = parse_datetime(headers.get("eta"), "eta")
    except InvalidMessage:
        eta = None  # signed, so from_wire refuses it next, with the reason
    due = max(signed_at, eta.timestamp()) if eta is not None else signed_at
    if now - due > max_age:
        raise InvalidSignature(f"task {task}: signed {now - signed_at:.0f} s ago and due {now - due:.0f} s ago, "
                               f"more than SIGNING_MAX_AGE ({max_age:g} s): refused as a possible replay")
    if signed_at - now > max_age:
        raise InvalidSignature(f"task {task}: signed {signed_at - now:.0f} s in the future, more than "
                               f"SIGNING_MAX_AGE ({max_age:g} s): check the sender's clock")


def _label(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 200 and value.isprintable():
        return value
    return short_repr.repr(value)
