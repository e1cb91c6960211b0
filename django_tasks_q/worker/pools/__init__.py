"""Worker pools: ``solo`` (inline), ``threads``, ``prefork`` (child processes), ``asyncio`` (threads + one loop),
``gevent`` (greenlets)."""

from __future__ import annotations

from ...exceptions import ImproperlyConfigured
from .base import Job, Pool


def create_pool(name: str, concurrency: int, hostname: str, **options) -> Pool:
    cls: type[Pool]
    if name == "solo":
        from .solo import SoloPool as cls
    elif name == "threads":
        from .threads import ThreadPool as cls
    elif name == "prefork":
        from .prefork import PreforkPool as cls
    elif name == "asyncio":
        from .asyncio import AsyncioPool as cls
    elif name == "gevent":
        from .gevent import GeventPool as cls
    else:
        raise ImproperlyConfigured(f"unknown pool {name!r}; use solo, threads, prefork, asyncio or gevent")
    return cls(concurrency, hostname, **options)


__all__ = ["Job", "Pool", "create_pool"]
