"""The cache result backend: task states in a Django cache alias, in Celery's key and JSON layout.

``RESULT_BACKEND = "cache"`` keeps results in ``CACHES["default"]``;
``"cache://<alias>"`` in another alias. For sites that already run a cache
(django-redis, memcached) and want results there without a second URL to
configure, or where results are short-lived and may be lost: a cache may
evict an entry before it expires.

Each state is the JSON document the Redis backend writes
(``results/celery_meta.py``) under ``celery-task-meta-<id>``, a saved group
``celery-taskset-meta-<id>`` -- through the cache framework, so the cache's
``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` apply (django-redis stores
``:1:celery-task-meta-<id>``, and pickles the text by default: Celery
cannot read these keys, use ``"redis://..."`` for a mixed fleet). Every
entry is written with ``RESULT_EXPIRES`` as its timeout (``None`` or 0:
none), so ``cleanup()`` has nothing to do and returns 0. A value that is not
JSON raises ``TypeError`` before anything is written, as with the other
backends, and the worker records an ``EncodeError`` instead; nothing the
cache's serializer could refuse ever reaches it.

``get()`` polls (the base class's back-off): the cache API has no
subscription to sleep on.

Chords are counted with ``cache.add`` and ``cache.incr``
(``results/cache_chords.py``), which are atomic across processes with
django-redis, Django's own ``RedisCache`` and memcached. ``LocMemCache``
keeps entries in each process's memory: results and counts are seen only by
the process that wrote them (a worker's results never reach the caller), so
``manage.py check`` warns (``django_tasks_q.W005``); ``FileBasedCache`` and
``DatabaseCache`` implement ``incr`` as a read then a write, so two members
finishing at once can be counted once (warned too). ``DummyCache`` keeps
nothing, and is refused (``django_tasks_q.E004``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.cache import caches

from ..conf import settings
from ..core.states import TaskState
from . import cache_chords
from .backend import ResultBackend, ResultMeta
from .celery_meta import decode_group, decode_meta, encode_group, encode_meta
from .redis_keys import group_key, task_key

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache

    from ..core.protocol import TaskMessage


class CacheBackend(ResultBackend):
    """Results in ``django.core.cache.caches[alias]``, looked up on each call.

    Not kept on the instance: Django's cache handler hands each thread its own
    cache object (and makes new ones when ``CACHES`` changes, in tests), while
    the connections behind it (django-redis's pool) are shared per process.
    """

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias

    @property
    def cache(self) -> BaseCache:
        return caches[self.alias]

    @staticmethod
    def timeout() -> int | None:
        """``RESULT_EXPIRES`` as a cache timeout: None (never expire) for None or 0, which Django would
        take as "expire at once"; a fraction of a second is rounded up, never down to 0."""
        expires = settings.RESULT_EXPIRES
        return math.ceil(expires) if expires else None

    # -- task states -----------------------------------------------------
    def mark(self, task_id: str, state: str, *, result: Any = None, traceback: str = "",
             request: Any = None, task_name: str = "", runtime: float | None = None) -> None:
        document = encode_meta(task_id, state, result, traceback, request, task_name)  # TypeError: not JSON
        self.cache.set(task_key(task_id), document, self.timeout())

    def mark_started(self, task_id: str, *, request: Any = None, task_name: str = "") -> None:
        """One write that waits, as the ORM backend's: the cache API has no conditional write to keep a
        late STARTED off a final state (the Redis backend's script), and none is late here -- the final
        state is written after it, by the same thread."""
        self.mark(task_id, TaskState.STARTED, request=request, task_name=task_name)

    def meta(self, task_id: str) -> ResultMeta | None:
        return decode_meta(task_id, self.cache.get(task_key(task_id)))

    def forget(self, task_id: str) -> None:
        self.cache.delete(task_key(task_id))

    def cleanup(self, older_than: datetime) -> int:
        """Nothing to delete: every entry carries ``RESULT_EXPIRES`` as its timeout, and the cache drops
        it (or evicts it sooner, under memory pressure)."""
        return 0

    # -- groups (GroupResult.save / restore) -----------------------------
    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        self.cache.set(group_key(group_id), encode_group(group_id, task_ids), self.timeout())

    def restore_group(self, group_id: str) -> list[str] | None:
        raw = self.cache.get(group_key(group_id))
        return None if raw is None else decode_group(raw)

    def delete_group(self, group_id: str) -> None:
        self.cache.delete(group_key(group_id))

    # -- chords, counted with add + incr (results/cache_chords.py) -------
    counts_chords = True

    def start_chord(self, group_id: str, body: dict, result_ids: list[str]) -> None:
        """Write the member ids and a zero count; the body travels in each member's ``embed["chord"]``."""
        cache_chords.start_chord(self, group_id, result_ids)

    def on_chord_part_return(self, message: TaskMessage, state: str, retval: Any) -> None:
        cache_chords.on_chord_part_return(message, state, retval, self)


__all__ = ["CacheBackend"]
