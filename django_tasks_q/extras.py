"""Optional parts and the pip extra that installs each one.

The core install (Django, kombu, croniter) runs the embedded ``django://``
broker with results in the ORM. Redis, RabbitMQ, gevent and Django's task
framework need packages of their own, declared as extras in ``setup.cfg``.
A site configured for one of them without its packages must learn that at
start-up, from a system check naming the package and the ``pip install`` to
run, not from a traceback in a worker's reconnect loop (kombu imports its
Redis transport only when the first connection opens, and that transport
imports ``packaging``, which kombu itself declares only in its ``redis``
extra).
"""

from __future__ import annotations

from importlib import import_module
from urllib.parse import urlsplit

#: extra -> the modules importing it makes available; each is imported, in this order, by :func:`missing`.
MODULES: dict[str, tuple[str, ...]] = {
    "redis": ("redis", "kombu.transport.redis"),
    "amqp": ("amqp", "kombu.transport.pyamqp"),
    "gevent": ("gevent",),
    "tasks": ("django_tasks",),
}
#: BROKER_URL scheme -> the extra its transport needs (django:// and memory:// need none).
BROKER_EXTRAS = {"redis": "redis", "rediss": "redis", "sentinel": "redis",
                 "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp"}


def install_command(extra: str) -> str:
    return f'pip install "django-tasks-q[{extra}]"'


def missing(extra: str) -> str | None:
    """The name of the first package of ``extra`` that cannot be imported, or None when all can."""
    for module in MODULES[extra]:
        try:
            import_module(module)
        except ImportError as exc:
            # exc.name is the module that failed deep inside (e.g. "packaging.version" under kombu's Redis
            # transport): the distribution to install is its top-level package.
            return (exc.name or module).split(".")[0]
    return None


def broker_extra(url: str) -> str | None:
    """The extra the transport of ``url`` needs (the first URL of a ``;`` failover list decides)."""
    return BROKER_EXTRAS.get(urlsplit(url.split(";", 1)[0]).scheme)


def require(extra: str, what: str) -> None:
    """Raise :class:`ImproperlyConfigured` naming the missing package when ``extra`` is not installed."""
    package = missing(extra)
    if package is not None:
        from .exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{what} needs the Python package {package!r}, which is not installed: "
                                   f"{install_command(extra)}")
