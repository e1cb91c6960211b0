"""What a ``RESULT_BACKEND`` value means: which backend it names, and why it cannot be used.

Shared by ``results/backend._make`` (which refuses a bad value with
``ImproperlyConfigured``) and ``manage.py check`` (``checks.py``: E004,
W005), so that both say the same words. Kept apart from the backend
interface: it reads Django's ``CACHES`` and parses Redis URLs, which the
interface has no need of.
"""

from __future__ import annotations

from typing import Any

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
CACHE_SCHEME = "cache://"
SUPPORTED = ("use 'django', 'redis://host:port/db' (or rediss://), 'cache' (the 'default' cache alias), "
             "'cache://<alias>' (another alias of settings.CACHES) or None")
#: CACHES backends that keep nothing: a result written there can never be read back
DISCARDING_CACHES = frozenset({"django.core.cache.backends.dummy.DummyCache"})


def cache_alias(value: Any) -> str | None:
    """The cache alias a ``RESULT_BACKEND`` of the cache form names (``"cache"``: ``"default"``), else None."""
    if value == "cache":
        return "default"
    if isinstance(value, str) and value.startswith(CACHE_SCHEME):
        return value[len(CACHE_SCHEME):]
    return None


def _cache_problem(alias: str) -> str | None:
    """Why ``settings.CACHES[alias]`` cannot keep results, or None."""
    from django.conf import settings as django_settings

    if not alias:
        return "no cache alias after 'cache://' (e.g. 'cache://results'; 'cache' alone uses 'default')"
    caches = getattr(django_settings, "CACHES", None) or {}
    if alias not in caches:
        known = ", ".join(repr(name) for name in caches) or "none"
        return f"cache alias {alias!r} is not in settings.CACHES (its aliases: {known})"
    backend = str((caches[alias] or {}).get("BACKEND", ""))
    if backend in DISCARDING_CACHES:
        return (f"settings.CACHES[{alias!r}] is {backend.rpartition('.')[2]}, which keeps nothing: every result "
                "would stay PENDING and no chord would finish")
    return None


def backend_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable ``RESULT_BACKEND``, or None (shared by ``_make`` and ``manage.py check``)."""
    if value is None or value == "django":
        return None
    alias = cache_alias(value)
    if alias is not None:
        return _cache_problem(alias)
    if not isinstance(value, str) or not value.startswith(REDIS_SCHEMES):
        return "not a supported result backend"
    from urllib.parse import urlsplit

    from redis.connection import parse_url

    try:
        parse_url(value)
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        if "port" in str(exc).lower():  # urllib's message quotes the text it took for a port: a password's tail
            return ("malformed Redis URL: the port is not a number from 0 to 65535 "
                    "(percent-encode '/', '?', '#' and '@' in a password)")
        return f"malformed Redis URL: {exc}"
    db = parts.path.strip("/")
    if value.startswith(("redis://", "rediss://")):
        if not parts.hostname:
            return "malformed Redis URL: no host (e.g. 'redis://localhost:6379/1')"
        if db and not db.isdigit():
            return f"malformed Redis URL: the database after the host must be a number, got {db!r}"
    return None


#: CACHES backends a cache result backend works on only partly, and what each one does not guarantee (W005)
PARTIAL_RESULT_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache":
        "keeps entries in each process's own memory: a worker's results are never seen by the process that "
        "sent the task, and chords are counted only within one process",
    "django.core.cache.backends.filebased.FileBasedCache":
        "implements incr() as a read then a write: two chord members finishing at once can be counted once, "
        "and that chord's body is never sent",
    "django.core.cache.backends.db.DatabaseCache":
        "implements incr() as a read then a write: two chord members finishing at once can be counted once, "
        "and that chord's body is never sent",
}


def partial_cache(value: Any) -> tuple[str, str, str] | None:
    """``(alias, BACKEND, what it does not guarantee)`` when ``value`` is a usable cache form on one of
    ``PARTIAL_RESULT_CACHES``; None otherwise (another backend, or a value ``backend_problem`` refuses)."""
    from django.conf import settings as django_settings

    alias = cache_alias(value)
    if alias is None or backend_problem(value) is not None:
        return None
    backend = str((django_settings.CACHES[alias] or {}).get("BACKEND", ""))
    return (alias, backend, PARTIAL_RESULT_CACHES[backend]) if backend in PARTIAL_RESULT_CACHES else None


__all__ = ["CACHE_SCHEME", "DISCARDING_CACHES", "PARTIAL_RESULT_CACHES", "REDIS_SCHEMES", "SUPPORTED",
           "backend_problem", "cache_alias", "partial_cache"]
