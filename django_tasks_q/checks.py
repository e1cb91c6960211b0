"""System checks for ``settings.TASKS_Q``: each error names the bad key.

Run by ``manage.py check`` and before every management command, so a worker
with a typo in its settings refuses to start with a clear message.
"""

from __future__ import annotations

import difflib
import ipaddress
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from django.core.checks import Error, Tags, Warning, register
from kombu.serialization import registry as serializers

from . import extras
from .broker.queues import build_queue
from .conf import DEFAULTS, settings
from .exceptions import ImproperlyConfigured
from .masking import mask_url
from .results.backend_setting import REDIS_SCHEMES, SUPPORTED, backend_problem, partial_cache

BROKER_SCHEMES = {"django", "redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory"}
_TYPES: dict[str, tuple[type, ...]] = {
    "BROKER_URL": (str,), "BROKER_TRANSPORT_OPTIONS": (dict,), "BROKER_CONNECTION_TIMEOUT": (int, float),
    "BROKER_PUBLISH_RETRIES": (int,), "RESULT_EXPIRES": (int, float, type(None)), "DEFAULT_QUEUE": (str,),
    "QUEUES": (dict,), "ROUTES": (dict,), "BEAT_SCHEDULE": (dict,), "TIMEZONE": (str,),
    "TASK_SERIALIZER": (str,), "ACCEPT_CONTENT": (list, tuple), "ALWAYS_EAGER": (bool,),
    "EAGER_PROPAGATES": (bool,), "ACKS_LATE": (bool,), "PREFETCH_MULTIPLIER": (int,), "TRACK_STARTED": (bool,),
    "SIGNING_KEY": (str, list, tuple, type(None)), "RESULT_BACKEND": (str, type(None)),
    "SIGNING_MAX_AGE": (int, float, type(None)),
    "SIGNING_ACCEPT_LEGACY": (bool,),
    "MAX_MESSAGE_BYTES": (int, type(None)),
    "MAX_HEADER_COUNT": (int, type(None)),
    "ETA_HOLD_MAX": (int, float), "REVOKE_EXPIRES": (int, float), "WORKER_HEARTBEAT": (int, float),
    "WORKER_STUCK_AFTER": (int, float), "DEAD_LETTER_QUEUE": (str, type(None)),
    "EVENTS": (bool,), "REMOTE_CONTROL": (bool, str),
    "MAX_CONCURRENCY": (int, type(None)),
    "EVENTS_KEEP_SECONDS": (int, float), "EVENTS_KEEP_ROWS": (int,), "ACTIVITY_KEEP_DAYS": (int, float),
    "API_TOKEN": (str, type(None)), "IMPORTS": (list, tuple),
    "WORKER_HIJACK_ROOT_LOGGER": (bool,),
}
#: settings whose values are secrets: a check message names their type, never their value
SECRET_SETTINGS = frozenset({"SIGNING_KEY", "API_TOKEN", "BROKER_TRANSPORT_OPTIONS"})
#: settings holding URLs: a check message shows them through ``mask_url``
URL_SETTINGS = frozenset({"BROKER_URL", "RESULT_BACKEND"})
#: the shortest signing key accepted, in bytes (an HMAC-SHA256 key should be as long as its output)
MIN_SIGNING_KEY_BYTES = 32
#: content types that let whoever can write to the broker run code in the worker
UNSAFE_CONTENT = {"pickle", "application/x-python-serialize", "yaml", "application/x-yaml"}


def _error(key: str, message: str, hint: str | None = None, number: int = 1) -> Error:
    return Error(f"TASKS_Q[{key!r}]: {message}", hint=hint, id=f"django_tasks_q.E{number:03d}")


def _shown(key: str, value: Any) -> str:
    """``value`` as a check message may print it: a secret by its type only, a URL masked.

    Check messages are printed before every management command, so into CI and deploy logs.
    """
    if key in URL_SETTINGS and isinstance(value, str):
        return repr(mask_url(value))
    if key in URL_SETTINGS and isinstance(value, (int, float)):  # a port alone: nothing to hide
        return repr(value)
    if key in SECRET_SETTINGS or key in URL_SETTINGS:
        return f"a value of type {type(value).__name__}"
    return repr(value)


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    user = settings.user_settings
    if not isinstance(user, dict):
        return [_error("*", f"settings.TASKS_Q must be a dict, got {type(user).__name__}")]
    for key in sorted(set(user) - set(DEFAULTS)):
        close = difflib.get_close_matches(key, DEFAULTS, n=1)
        errors.append(_error(key, "unknown setting", f"did you mean {close[0]!r}?" if close else
                             f"known settings: {', '.join(sorted(DEFAULTS))}", 1))
    values = settings.as_dict()
    for key, types in _TYPES.items():
        if not isinstance(values[key], types) or (isinstance(values[key], bool) and bool not in types and int in types):
            expected = " or ".join(t.__name__ for t in types)
            errors.append(_error(key, f"must be {expected}, got {_shown(key, values[key])}", number=2))
    if errors:
        return errors
    errors += _broker_url_errors(values["BROKER_URL"])
    backend = values["RESULT_BACKEND"]
    missing = _missing_extra("RESULT_BACKEND", backend, "redis") if isinstance(backend, str) and backend.startswith(
        REDIS_SCHEMES) else None
    problem = None if missing else backend_problem(backend)
    if missing:
        errors.append(missing)
    elif problem is not None:
        errors.append(_error("RESULT_BACKEND", f"{_shown('RESULT_BACKEND', backend)}: {problem}",
                             SUPPORTED, 4))
    if values["PREFETCH_MULTIPLIER"] < 1:
        errors.append(_error("PREFETCH_MULTIPLIER", "must be at least 1", number=5))
    for key in ("ETA_HOLD_MAX", "REVOKE_EXPIRES", "WORKER_HEARTBEAT", "WORKER_STUCK_AFTER",
                "EVENTS_KEEP_SECONDS", "EVENTS_KEEP_ROWS", "ACTIVITY_KEEP_DAYS"):
        if values[key] < 0:
            errors.append(_error(key, f"must not be negative, got {values[key]!r}", number=8))
    for name in [values["TASK_SERIALIZER"], *values["ACCEPT_CONTENT"]]:
        if name not in serializers.name_to_type and name not in serializers.type_to_name:
            errors.append(_error("TASK_SERIALIZER" if name == values["TASK_SERIALIZER"] else "ACCEPT_CONTENT",
                                 f"serializer {name!r} is not known to kombu", number=6))
    errors += _signing_key_errors(values["SIGNING_KEY"])
    if values["REMOTE_CONTROL"] not in (True, False, "read-only"):
        errors.append(_error("REMOTE_CONTROL", f'must be True, False or "read-only", got {values["REMOTE_CONTROL"]!r}',
                             number=2))
    if values["MAX_CONCURRENCY"] is not None and values["MAX_CONCURRENCY"] < 1:
        errors.append(_error("MAX_CONCURRENCY", "must be at least 1 (or None: 4 x the starting concurrency)", number=5))
    for key in ("SIGNING_MAX_AGE", "MAX_MESSAGE_BYTES", "MAX_HEADER_COUNT"):
        if values[key] is not None and values[key] <= 0:  # 0 would refuse every message: None turns it off
            errors.append(_error(key, f"must be positive (or None: no limit), got {values[key]!r}", number=8))
    if not all(isinstance(module, str) for module in values["IMPORTS"]):
        errors.append(_error("IMPORTS", f"must list module paths as strings, got {values['IMPORTS']!r}", number=10))
    for name, spec in values["QUEUES"].items():
        try:
            build_queue(name, spec)
        except ImproperlyConfigured as exc:
            errors.append(_error("QUEUES", str(exc), number=7))
        except (TypeError, ValueError, AttributeError):  # dict("videos") is a ValueError
            errors.append(_error("QUEUES", f"entry {name!r} must be a dict of queue options, got {spec!r}", number=7))
    return errors


def _signing_key_errors(keys: str | list | tuple | None) -> list[Error]:
    """An empty or short key (of a list: which one, by position), never its value.

    An empty key would turn verification off without a word (``TASKS_Q_SIGNING_KEY=`` from an unset secret).
    """
    if keys is None:
        return []
    hint = (f"use a random key of at least {MIN_SIGNING_KEY_BYTES} bytes, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'")
    if isinstance(keys, str):
        if not keys:
            return [_error("SIGNING_KEY", "is empty, which would turn signing off; set None to mean no signing",
                           hint, 9)]
        if len(keys.encode()) < MIN_SIGNING_KEY_BYTES:
            return [_error("SIGNING_KEY", f"the key is shorter than {MIN_SIGNING_KEY_BYTES} bytes", hint, 9)]
        return []
    if not keys:
        return [_error("SIGNING_KEY", "is an empty list: list at least one key (the first signs), or set None",
                       number=9)]
    errors = []
    for position, key in enumerate(keys, 1):
        if not isinstance(key, str) or not key:
            problem = "is empty" if isinstance(key, str) else f"is a {type(key).__name__}, not a string"
            errors.append(_error("SIGNING_KEY", f"key #{position} of the list {problem} (a list of keys must hold "
                                                f"non-empty strings; the first signs)", hint, 9))
        elif len(key.encode()) < MIN_SIGNING_KEY_BYTES:
            errors.append(_error("SIGNING_KEY", f"key #{position} of the list is shorter than "
                                                f"{MIN_SIGNING_KEY_BYTES} bytes", hint, 9))
    return errors


def _broker_url_errors(url: str) -> list[Error]:
    """A scheme we do not serve (with the closest one when it looks like a typo), or a transport whose packages
    are not installed."""
    for part in url.split(";"):  # a kombu failover list: "sentinel://h1;sentinel://h2"
        scheme = urlsplit(part).scheme
        if scheme not in BROKER_SCHEMES:
            close = difflib.get_close_matches(scheme, BROKER_SCHEMES, n=1)
            known = f"use one of {', '.join(sorted(s + '://' for s in BROKER_SCHEMES))}"
            return [_error("BROKER_URL", f"scheme {scheme!r} is not supported",
                           f"did you mean {close[0] + '://'!r}? {known}" if close else known, 3)]
    extra = extras.broker_extra(url)
    missing = _missing_extra("BROKER_URL", url, extra) if extra else None
    return [missing] if missing else []


def _missing_extra(key: str, value: str, extra: str) -> Error | None:
    package = extras.missing(extra)
    if package is None:
        return None
    scheme = urlsplit(value.split(";", 1)[0]).scheme
    return _error(key, f"{scheme}:// needs the Python package {package!r}, which is not installed",
                  f"install it with: {extras.install_command(extra)}", 11)


@register(Tags.compatibility)
def check_framework_backend(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """``settings.TASKS`` names our backend for Django's task framework, which Django 5.2 gets from the
    ``django-tasks`` package (Django 6 has ``django.tasks`` built in)."""
    from django.conf import settings as django_settings

    backends = getattr(django_settings, "TASKS", None)
    ours = [alias for alias, spec in backends.items() if isinstance(spec, dict)
            and str(spec.get("BACKEND", "")).startswith("django_tasks_q.")] if isinstance(backends, dict) else []
    if not ours:
        return []
    try:
        import_module("django.tasks")
        return []
    except ImportError:
        if extras.missing("tasks") is None:
            return []
    return [Error(f"settings.TASKS[{ours[0]!r}] uses django_tasks_q.backends.TaskQBackend, which needs Django's "
                  f"task framework: Django 6, or the Python package 'django-tasks' on Django 5.2",
                  hint=f"install it with: {extras.install_command('tasks')}", id="django_tasks_q.E012")]


@register(Tags.security)
def check_accepted_content(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when workers accept pickle (or YAML): a message then runs whatever code its sender chose."""
    accepted = settings.as_dict()["ACCEPT_CONTENT"]
    unsafe = sorted(set(accepted) & UNSAFE_CONTENT) if isinstance(accepted, (list, tuple)) else []
    if not unsafe:
        return []
    return [Warning(f"TASKS_Q['ACCEPT_CONTENT'] accepts {', '.join(unsafe)}: anyone who can write to the broker "
                    f"can run code in your workers",
                    hint="accept only 'json' unless every producer is trusted, and set SIGNING_KEY so workers "
                         "refuse messages nobody signed", id="django_tasks_q.W001")]


#: brokers reached over the network, whose URL may carry a password
NETWORK_BROKERS = frozenset({"redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp"})


def _remote_hosts(url: str) -> list[tuple[str, bool]]:
    """Each non-loopback host of a (failover) broker URL and whether a password comes with it."""
    options = settings.as_dict()["BROKER_TRANSPORT_OPTIONS"]
    options = options if isinstance(options, dict) else {}
    sentinel = options.get("sentinel_kwargs")
    in_options = any("password" in str(name).lower() for name in options) or (
        isinstance(sentinel, dict) and "password" in sentinel)
    found = []
    for part in url.split(";"):
        try:
            parts = urlsplit(part)
            host = parts.hostname
        except ValueError:
            continue
        if parts.scheme not in NETWORK_BROKERS or not host or _is_loopback(host):
            continue
        has_password = bool(parts.password) or "password=" in parts.query.lower() or in_options
        found.append((host, has_password))
    return found


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register(Tags.security, deploy=True)
def check_broker_exposure(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """``manage.py check --deploy``: whoever can write to the broker chooses what the workers run.

    W003: a broker on another host that takes no password. W004: such a broker with signing off, so a worker
    runs any message that reaches its queues."""
    values = settings.as_dict()
    url = values["BROKER_URL"]
    if not isinstance(url, str):
        return []
    remote = _remote_hosts(url)
    warnings = []
    open_hosts = sorted({host for host, has_password in remote if not has_password})
    if open_hosts:
        warnings.append(Warning(
            f"TASKS_Q['BROKER_URL'] reaches {', '.join(open_hosts)} without a password: anyone who can reach "
            f"the broker can send tasks to your workers and read their arguments",
            hint="require a password on the broker (Redis requirepass or ACL users, RabbitMQ users) and put it "
                 "in the URL; see docs/security.md", id="django_tasks_q.W003"))
    if remote and not values["SIGNING_KEY"]:
        warnings.append(Warning(
            f"TASKS_Q['SIGNING_KEY'] is not set and the broker is on another host "
            f"({', '.join(sorted({host for host, _ in remote}))}): workers run any message that reaches "
            f"their queues, whoever sent it",
            hint="set SIGNING_KEY (the same random key of 32 bytes or more on every web process and worker) so "
                 "workers refuse messages nobody signed; see docs/security.md", id="django_tasks_q.W004"))
    return warnings


@register(Tags.database)
def check_sqlite_transaction_mode(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when our tables live in SQLite with deferred transactions (the default of ``startproject``).

    A worker writes from several threads (heartbeat, claims, results) while the web process sends: a
    deferred transaction that reads and then writes cannot wait for the lock, SQLite refuses it at once
    with "database is locked". ``transaction_mode: IMMEDIATE`` takes the write lock up front, so writers
    queue for up to ``timeout`` seconds instead."""
    from django.apps import apps
    from django.conf import settings as django_settings
    from django.db import router

    aliases = {router.db_for_write(model) for model in apps.get_app_config("django_tasks_q").get_models()}
    warnings = []
    for alias in sorted(a for a in aliases if a in django_settings.DATABASES):
        database = django_settings.DATABASES[alias]
        options = database.get("OPTIONS") or {}
        if database.get("ENGINE") == "django.db.backends.sqlite3" and options.get("transaction_mode") != "IMMEDIATE":
            warnings.append(Warning(
                f"DATABASES[{alias!r}] is SQLite with deferred transactions: a worker's writes and the web "
                f"process's can fail with 'database is locked'",
                hint='set DATABASES[...]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20, '
                     '"init_command": "PRAGMA journal_mode=WAL;"} (docs/installation.md), or use PostgreSQL',
                id="django_tasks_q.W002"))
    return warnings




@register(Tags.caches)
def check_result_cache(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """W005: ``RESULT_BACKEND`` is a cache alias whose backend cannot share results or count chords across
    processes. (A missing alias, or ``DummyCache``, which keeps nothing, is E004 from ``check_settings``.)"""
    value = settings.as_dict()["RESULT_BACKEND"]
    partial = partial_cache(value)
    if partial is None:
        return []
    alias, backend, what = partial
    return [Warning(f"TASKS_Q['RESULT_BACKEND'] = {value!r} keeps results in settings.CACHES[{alias!r}], whose "
                    f"{backend.rpartition('.')[2]} {what}",
                    hint="point the alias at django-redis (django_redis.cache.RedisCache), Django's RedisCache "
                         "or memcached, or use RESULT_BACKEND 'django' or 'redis://...'; docs/results.md",
                    id="django_tasks_q.W005")]
