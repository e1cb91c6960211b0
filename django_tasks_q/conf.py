"""The ``TASKS_Q`` settings dict: defaults, environment overrides, reload.

Read settings through ``django_tasks_q.conf.settings.KEY``. Defaults are
filled in here and nowhere else; a key missing from ``settings.TASKS_Q`` is
taken from the environment variable ``TASKS_Q_<KEY>`` when set (parsed as
JSON when it looks like JSON, so ``TASKS_Q_ACKS_LATE=true`` is a bool), then
from the defaults. String settings (URLs, names, keys) are never parsed, so
``TASKS_Q_SIGNING_KEY=20240517`` stays a string (a JSON list, ``["new", "old"]``, gives
several keys). The cache is dropped on Django's ``setting_changed`` so ``override_settings(TASKS_Q=...)``
works in tests. Validation lives in
``checks.py`` so a bad value is reported by ``manage.py check`` with the key.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    "BROKER_URL": "django://",
    "BROKER_TRANSPORT_OPTIONS": {},
    "BROKER_CONNECTION_TIMEOUT": 4.0,
    "BROKER_PUBLISH_RETRIES": 3,
    "RESULT_BACKEND": "django",
    "RESULT_EXPIRES": 86400,
    "DEFAULT_QUEUE": "default",
    "QUEUES": {},
    "ROUTES": {},
    "BEAT_SCHEDULE": {},
    "TIMEZONE": None,
    "TASK_SERIALIZER": "json",
    "ACCEPT_CONTENT": ["json"],
    "ALWAYS_EAGER": False,
    "EAGER_PROPAGATES": False,
    "ACKS_LATE": False,
    "PREFETCH_MULTIPLIER": 4,
    "TRACK_STARTED": True,
    "SIGNING_KEY": None,
    "SIGNING_MAX_AGE": 7 * 86400,
    "SIGNING_ACCEPT_LEGACY": False,
    "MAX_MESSAGE_BYTES": 32 * 1024 * 1024,
    "MAX_HEADER_COUNT": 1000,
    "ETA_HOLD_MAX": 30.0,
    "REVOKE_EXPIRES": 30 * 86400,
    "WORKER_HEARTBEAT": 5.0,
    "WORKER_STUCK_AFTER": 60.0,
    "DEAD_LETTER_QUEUE": "tasksq.dead",
    "EVENTS": False,
    "REMOTE_CONTROL": True,
    "MAX_CONCURRENCY": None,
    "EVENTS_KEEP_SECONDS": 86400,
    "EVENTS_KEEP_ROWS": 100_000,
    "ACTIVITY_KEEP_DAYS": 30,
    "API_TOKEN": None,
    "IMPORTS": [],
    "WORKER_HIJACK_ROOT_LOGGER": False,
}

ENV_PREFIX = "TASKS_Q_"
#: Keys whose environment value is taken as the string it is ("null" still means None).
STRING_KEYS = frozenset({"BROKER_URL", "RESULT_BACKEND", "DEFAULT_QUEUE", "TIMEZONE", "TASK_SERIALIZER",
                         "SIGNING_KEY", "DEAD_LETTER_QUEUE", "API_TOKEN"})


def _from_env(key: str) -> tuple[bool, Any]:
    raw = os.environ.get(ENV_PREFIX + key)
    if raw is None:
        return False, None
    if key == "SIGNING_KEY" and raw.startswith("["):  # rotation: several keys
        try:
            return True, json.loads(raw)
        except ValueError:
            return True, raw
    if key in STRING_KEYS:
        return True, None if raw == "null" else raw
    try:
        return True, json.loads(raw)
    except ValueError:
        return True, raw  # not JSON: the checks report it against the key's type


class Settings:
    """Attribute access to the merged settings, computed once per change."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(django_settings, "TASKS_Q", None) or {}

    def as_dict(self) -> dict[str, Any]:
        if self._cache is None:
            user = self.user_settings
            merged = {}
            for key, default in DEFAULTS.items():
                if key in user:
                    merged[key] = user[key]
                    continue
                found, value = _from_env(key)
                merged[key] = value if found else default
            if merged["TIMEZONE"] is None:
                merged["TIMEZONE"] = django_settings.TIME_ZONE or "UTC"
            self._cache = merged
        return self._cache

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in DEFAULTS:
            raise AttributeError(f"TASKS_Q has no setting {key!r}")
        return self.as_dict()[key]

    def reload(self) -> None:
        self._cache = None


settings = Settings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKS_Q":
        settings.reload()


setting_changed.connect(_reload)
