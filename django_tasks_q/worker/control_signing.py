"""Signed remote control: what a pidbox command and its reply carry when ``SIGNING_KEY`` is set.

With signing on, anyone who can write to the broker could otherwise stop,
resize or reconfigure every worker through the ``celery.pidbox`` exchange,
so our senders (``taskinspect``, ``taskcontrol``, ``taskstatus``: every
caller of :func:`django_tasks_q.inspection.broadcast`) sign each command and
the worker (worker/remote_control.py) refuses, and logs, one that is
unsigned, badly signed, older than :data:`MAX_AGE` seconds (or from further
in the future) or seen before. The signature covers the method, the
arguments, the destination (and pattern/matcher), the reply ticket and
reply routing key, and the time it was made; it travels as one extra
argument, :data:`SIGNATURE_ARGUMENT`, which the worker removes before the
handler runs. Replies are sealed too: the worker's answer becomes
``{"tasks_q_reply": <JSON text>, "tasks_q_signature": <hex>}``, the
signature covering the worker's name, the request's ticket and that text,
so a reply cannot be forged or moved to another request.

With signing off (the default) nothing here runs: the messages are Celery's
own, and ``celery inspect``/``celery control``/Flower work as before. With
signing on, their unsigned commands are refused, by design.

The HMAC primitives are core/signing.py's; the arguments and replies are
signed as JSON text with sorted keys, which a JSON round trip preserves.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from kombu.pidbox import Mailbox
from kombu.utils.json import dumps, loads

from ..conf import settings
from ..core.signing import canonical, matches, sign, signing_keys

#: the argument that carries ``{"at": <epoch seconds>, "nonce": <hex>, "signature": <hex>}``
SIGNATURE_ARGUMENT = "tasks_q_signature"
#: the keys of a sealed reply
REPLY_TEXT, REPLY_SIGNATURE = "tasks_q_reply", "tasks_q_signature"
#: seconds a signed command stays valid (either side of the worker's clock)
MAX_AGE = 60.0


def keys() -> tuple[bytes, ...]:
    """The signing keys from ``SIGNING_KEY``: empty when signing is off."""
    return signing_keys(settings.SIGNING_KEY)


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _request_data(method: str, arguments: dict[str, Any], destination: Any, pattern: Any, matcher: Any,
                  ticket: Any, reply_key: Any, at: float, nonce: str) -> bytes:
    return canonical(["tasks-q-control", method, _text(arguments), _text(destination), _text(pattern),
                      _text(matcher), _text(ticket), _text(reply_key), at, nonce])


def sign_arguments(key: bytes, method: str, arguments: dict[str, Any] | None, destination: Any, *,
                   ticket: Any = None, reply_key: Any = None, pattern: Any = None, matcher: Any = None,
                   at: float | None = None) -> dict[str, Any]:
    """``arguments`` plus :data:`SIGNATURE_ARGUMENT`, signed under ``key``."""
    plain = {name: value for name, value in (arguments or {}).items() if name != SIGNATURE_ARGUMENT}
    at = time.time() if at is None else float(at)
    nonce = uuid.uuid4().hex
    data = _request_data(method, plain, destination, pattern, matcher, ticket, reply_key, at, nonce)
    return {**plain, SIGNATURE_ARGUMENT: {"at": at, "nonce": nonce, "signature": sign(key, data)}}


class ReplayGuard:
    """Signatures accepted in the last :data:`MAX_AGE` seconds: a copy of a signed command is refused."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, signature: str, now: float) -> bool:
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {sig: until for sig, until in self._seen.items() if until > now}
            if self._seen.get(signature, 0.0) > now:
                return False
            self._seen[signature] = now + 2 * MAX_AGE
            return True


def verify_request(keys_: tuple[bytes, ...], body: dict[str, Any], guard: ReplayGuard | None = None,
                   now: float | None = None) -> tuple[str | None, dict[str, Any]]:
    """``(None, arguments without the signature)`` for a good command, else ``(why it is refused, {})``."""
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, dict):
        return "its arguments are not a mapping", {}
    stamp = arguments.get(SIGNATURE_ARGUMENT)
    if stamp is None:
        return "it is not signed", {}
    if not isinstance(stamp, dict):
        return "its signature is malformed", {}
    at, nonce, given = stamp.get("at"), stamp.get("nonce"), stamp.get("signature")
    if not isinstance(at, float) or not isinstance(nonce, str):
        return "its signature is malformed", {}
    plain = {name: value for name, value in arguments.items() if name != SIGNATURE_ARGUMENT}
    reply_to = body.get("reply_to")
    reply_key = reply_to.get("routing_key") if isinstance(reply_to, dict) else None
    try:
        data = _request_data(str(body.get("method")), plain, body.get("destination"), body.get("pattern"),
                             body.get("matcher"), body.get("ticket"), reply_key, at, nonce)
    except (TypeError, ValueError):
        return "its signature is malformed", {}
    if not matches(keys_, data, given):
        return "its signature does not match SIGNING_KEY", {}
    now = time.time() if now is None else now
    if abs(now - at) > MAX_AGE:
        return f"it was signed {now - at:.0f}s ago (more than {MAX_AGE:g}s either way)", {}
    if guard is not None and not guard.first_time(str(given), now):
        return "it was received before (a replay)", {}
    return None, plain


def _reply_data(hostname: str, ticket: Any, text: str) -> bytes:
    return canonical(["tasks-q-control-reply", hostname, _text(ticket), text])


def seal_reply(key: bytes, hostname: str, ticket: Any, value: Any) -> dict[str, str]:
    """The reply ``value`` of ``hostname`` to request ``ticket``, as signed JSON text."""
    text = dumps(value)
    return {REPLY_TEXT: text, REPLY_SIGNATURE: sign(key, _reply_data(hostname, ticket, text))}


def open_reply(keys_: tuple[bytes, ...], hostname: str, ticket: Any, sealed: Any) -> tuple[bool, Any]:
    """``(True, value)`` for a reply sealed by :func:`seal_reply` under one of ``keys_``, else ``(False, sealed)``."""
    if not isinstance(sealed, dict) or not isinstance(sealed.get(REPLY_TEXT), str):
        return False, sealed
    text = sealed[REPLY_TEXT]
    if not matches(keys_, _reply_data(hostname, ticket, text), sealed.get(REPLY_SIGNATURE)):
        return False, sealed
    return True, loads(text)


class SigningMailbox(Mailbox):
    """A client mailbox that signs every command it publishes with the first signing key.

    ``Mailbox._publish`` is where the reply ticket and reply queue are known; the ticket of the
    last command is kept in :attr:`last_ticket` to check the replies against.
    """

    signing_key: bytes | None = None
    last_ticket: Any = None

    def _publish(self, type: str, arguments: Any, destination: Any = None,  # type: ignore[override, unused-ignore]
                 reply_ticket: Any = None, **options: Any) -> Any:  # kombu 5.7 types **options one by one
        if self.signing_key is not None:
            arguments = sign_arguments(self.signing_key, type, arguments, destination, ticket=reply_ticket,
                                       reply_key=self.oid if reply_ticket else None,
                                       pattern=options.get("pattern"), matcher=options.get("matcher"))
        self.last_ticket = reply_ticket
        return super()._publish(type, arguments, destination=destination, reply_ticket=reply_ticket, **options)


__all__ = ["MAX_AGE", "ReplayGuard", "SIGNATURE_ARGUMENT", "SigningMailbox", "keys", "open_reply", "seal_reply",
           "sign_arguments", "verify_request"]
