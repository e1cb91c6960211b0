"""HMAC primitives shared by everything that is signed: task messages and remote control.

``SIGNING_KEY`` is one key or a list (the first signs, every one verifies,
so keys can be rotated). What is signed is a *canonical* byte string built
by :func:`canonical` from the fields that matter, each length-prefixed, so
that no two different field lists encode alike (``("ab", "c")`` and
``("a", "bc")`` differ). :func:`matches` is total: a signature that is not
a string of 64 hex digits -- another type, non-ASCII text, the wrong length
-- simply does not match; it never raises, so a forged header cannot steer
the caller into an error path.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

#: hex digits of an HMAC-SHA256
SIGNATURE_LENGTH = 64


def signing_keys(setting: str | list[str] | tuple[str, ...] | None) -> tuple[bytes, ...]:
    """``SIGNING_KEY`` as keys in bytes: empty when signing is off."""
    if not setting:
        return ()
    return tuple(key.encode() for key in ((setting,) if isinstance(setting, str) else setting) if key)


def canonical(fields: Iterable[Any]) -> bytes:
    """One unambiguous byte string for ``fields`` (str, bytes, int, float, bool or None).

    Each field is a type letter, its length in bytes, ``:`` and its bytes; ``None`` is ``n``. A field of
    any other type is a programming error (TypeError), not something to stringify silently.
    """
    out = bytearray()
    for value in fields:
        if value is None:
            out += b"n"
            continue
        if isinstance(value, bool):
            tag, data = b"b", b"1" if value else b"0"
        elif isinstance(value, (int, float)):
            tag, data = b"i" if isinstance(value, int) else b"f", repr(value).encode()
        elif isinstance(value, str):
            tag, data = b"s", value.encode("utf-8", "surrogatepass")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            tag, data = b"y", bytes(value)
        else:
            raise TypeError(f"cannot sign a field of type {type(value).__name__}")
        out += tag + str(len(data)).encode() + b":" + data
    return bytes(out)


def sign(key: bytes, data: bytes) -> str:
    """The hex HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def matches(keys: tuple[bytes, ...], data: bytes, given: Any) -> bool:
    """Is ``given`` the signature of ``data`` under one of ``keys``? False for anything malformed."""
    if not isinstance(given, str) or len(given) != SIGNATURE_LENGTH or not given.isascii():
        return False
    given_bytes = given.encode("ascii")
    return any(hmac.compare_digest(given_bytes, sign(key, data).encode("ascii")) for key in keys)
