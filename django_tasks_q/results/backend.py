"""The result backend interface and the factory that picks one from settings.

A backend records task states (``mark``) and reads them back (``meta``,
``wait``); the ORM, Redis and cache backends also keep saved groups
(``save_group``) and count chords (``counts_chords``: ``start_chord``,
``on_chord_part_return``), see ``ResultBackend``. ``RESULT_BACKEND``:
``"django"`` (the ORM ``TaskResult`` table, default), ``"redis://..."``
(Celery's Redis layout, see ``results/redis.py``), ``"cache"`` or
``"cache://<alias>"`` (a Django cache alias, ``results/cache.py``) or
``None`` (results are not kept: ``AsyncResult`` stays PENDING). Which
values are usable, and why not, is ``results/backend_setting.py``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..conf import settings
from ..core.states import EXCEPTION_STATES, READY_STATES, TaskState
from ..exceptions import ImproperlyConfigured, TaskError, TimeoutError
from ..masking import mask_url
from .backend_setting import REDIS_SCHEMES, SUPPORTED, backend_problem, cache_alias

if TYPE_CHECKING:
    from ..core.protocol import TaskMessage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultMeta:
    """What a backend knows about one task id."""

    task_id: str
    state: str
    result: Any = None
    traceback: str = ""
    date_done: datetime | None = None
    task_name: str = ""
    retries: int = 0

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Celery's JSON layout for an exception, so both sides can rebuild it."""
    return {"exc_type": type(exc).__name__, "exc_message": list(_safe_args(exc)), "exc_module": type(exc).__module__}


def _safe_args(exc: BaseException) -> tuple:
    import json

    try:
        json.dumps(exc.args)
        return exc.args
    except (TypeError, ValueError):
        return (str(exc),)


def rebuild_exception(description: Any) -> BaseException:
    """The exception a task raised, as the same type when its module is already loaded here.

    Only modules this process has imported are looked in (as Celery does):
    a result store is data, and must not make a client import a module it
    names.
    """
    if not isinstance(description, dict) or "exc_type" not in description:
        return TaskError(repr(description))
    name, module = description["exc_type"], description.get("exc_module") or "builtins"
    message = description.get("exc_message") or []
    args = tuple(message) if isinstance(message, (list, tuple)) else (message,)
    try:
        cls = getattr(sys.modules[module], name)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls(*args)
    except Exception:  # not importable, or a constructor with another signature
        pass
    return TaskError(f"{module}.{name}: {', '.join(map(str, args))}")


class ResultBackend:
    """Base class: subclasses implement ``mark``, ``meta``, ``forget``, ``cleanup``.

    What else a backend supports it declares, and callers ask the flag, never
    the backend's type or the ``RESULT_BACKEND`` string:

    * ``counts_chords`` -- the backend counts a chord's header itself:
      ``start_chord`` is called by the caller before the header's members are
      sent, and ``on_chord_part_return`` by the worker after each member (or
      a chain that may be one) has finished; the call that completes the
      header sends the body once, or records it FAILURE and runs its
      errbacks. A chord on a backend without it is refused when it is sent.
    * saved groups: ``save_group`` / ``restore_group`` / ``delete_group``
      keep a group's ordered member ids for ``GroupResult.save`` /
      ``restore``; the base class keeps none.
    """

    #: polls back off from this many seconds up to ``interval``
    first_poll = 0.005
    #: ``start_chord`` and ``on_chord_part_return`` are implemented (see the class docstring)
    counts_chords = False

    def mark(self, task_id: str, state: str, *, result: Any = None, traceback: str = "",
             request: Any = None, task_name: str = "", runtime: float | None = None) -> None:
        raise NotImplementedError

    def mark_started(self, task_id: str, *, request: Any = None, task_name: str = "") -> None:
        """The STARTED write before a task runs; a backend may write it without waiting."""
        self.mark(task_id, TaskState.STARTED, request=request, task_name=task_name)

    def mark_received(self, task_id: str, *, request: Any = None, task_name: str = "") -> None:
        """The RECEIVED write of a task that waits in a worker; a backend may write it without waiting,
        as long as a RECEIVED that lands late never replaces a later state."""
        self.mark(task_id, TaskState.RECEIVED, request=request, task_name=task_name)

    def meta(self, task_id: str) -> ResultMeta | None:
        raise NotImplementedError

    def forget(self, task_id: str) -> None:
        raise NotImplementedError

    def cleanup(self, older_than: datetime) -> int:
        """Delete finished results done before ``older_than``; return how many."""
        raise NotImplementedError

    # -- groups (GroupResult.save / restore) -----------------------------
    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        """Keep a group's ordered member ids, for ``GroupResult.restore``."""
        raise NotImplementedError(f"{type(self).__name__} does not keep groups")

    def restore_group(self, group_id: str) -> list[str] | None:
        """The ids ``save_group`` kept for ``group_id``, in order; None when it was never saved."""
        raise NotImplementedError(f"{type(self).__name__} does not keep groups")

    def delete_group(self, group_id: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not keep groups")

    # -- chords (when counts_chords) --------------------------------------
    def start_chord(self, group_id: str, body: dict, result_ids: list[str]) -> None:
        """Before the header is sent: the chord ``group_id`` has these members (task ids in header
        order) and ``body`` (a signature dict carrying ``chord_size``) to send with their results."""
        raise NotImplementedError(f"{type(self).__name__} does not count chords")

    def on_chord_part_return(self, message: TaskMessage, state: str, retval: Any) -> None:
        """A worker finished ``message`` with ``state`` (``retval``: its return value or exception).

        Called for a message with ``embed["chord"]`` (a header member) or an
        ``embed["chain"]`` (a chain whose last step may be one: failing before
        it, that step will never be counted). Must not raise for a message
        that is not a chord member; RETRY is not an end and is not counted.
        """
        if message.chord and message.group_id:
            logger.error("task %s[%s] is a member of chord %s but the result backend %s does not count "
                         "chords; not counted", message.task, message.id, message.group_id, type(self).__name__)

    def wait(self, task_id: str, timeout: float | None, interval: float) -> ResultMeta:
        """Poll with back-off until the task is ready or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(self.first_poll, interval)
        while True:
            found = self.meta(task_id)
            if found is not None and found.ready:
                return found
            if deadline is not None and time.monotonic() + delay > deadline:
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    time.sleep(remaining)
                    found = self.meta(task_id)
                    if found is not None and found.ready:
                        return found
                state = found.state if found else "PENDING"
                raise TimeoutError(f"task {task_id} not ready after {timeout}s (state {state})")
            time.sleep(delay)
            delay = min(delay * 2, interval)


class DisabledBackend(ResultBackend):
    """``RESULT_BACKEND = None``: nothing is stored."""

    def mark(self, task_id, state, **kwargs) -> None:
        return None

    def meta(self, task_id: str) -> ResultMeta | None:
        return None

    def forget(self, task_id: str) -> None:
        return None

    def cleanup(self, older_than: datetime) -> int:
        return 0

    def wait(self, task_id: str, timeout: float | None, interval: float) -> ResultMeta:
        raise ImproperlyConfigured("RESULT_BACKEND is None: results are not stored, so get() cannot wait for one")

    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        raise ImproperlyConfigured("RESULT_BACKEND is None: results are not stored, so a group cannot be saved")

    def restore_group(self, group_id: str) -> list[str] | None:
        return None

    def delete_group(self, group_id: str) -> None:
        return None


class MemoryBackend(ResultBackend):
    """Keeps states in a dict: the result store of one eager run."""

    def __init__(self) -> None:
        self.rows: dict[str, ResultMeta] = {}
        self.groups: dict[str, list[str]] = {}

    def mark(self, task_id, state, *, result=None, traceback="", request=None, task_name="", runtime=None) -> None:
        self.rows[task_id] = ResultMeta(task_id=task_id, state=state, result=result, traceback=traceback or "",
                                        task_name=task_name)

    def meta(self, task_id: str) -> ResultMeta | None:
        return self.rows.get(task_id)

    def forget(self, task_id: str) -> None:
        self.rows.pop(task_id, None)

    def cleanup(self, older_than: datetime) -> int:
        return 0

    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        self.groups[group_id] = list(task_ids)

    def restore_group(self, group_id: str) -> list[str] | None:
        found = self.groups.get(group_id)
        return None if found is None else list(found)

    def delete_group(self, group_id: str) -> None:
        self.groups.pop(group_id, None)


_cache: dict[str, Any] = {}
_lock = threading.Lock()


def get_backend() -> ResultBackend:
    """The configured backend, one instance per process and setting value."""
    key = repr(settings.RESULT_BACKEND)
    backend = _cache.get(key)
    if backend is None:
        with _lock:
            backend = _cache.get(key) or _make(settings.RESULT_BACKEND)
            _cache.clear()
            _cache[key] = backend
    return backend


#: The class behind each kind of RESULT_BACKEND, by dotted path: imported on first use, as Django imports the
#: BACKEND of a CACHES or TASKS entry, so that the interface does not import its implementations (which
#: import it).
IMPLEMENTATIONS = {"django": "django_tasks_q.results.database.DatabaseBackend",
                   "redis": "django_tasks_q.results.redis.RedisBackend",
                   "cache": "django_tasks_q.results.cache.CacheBackend"}


def _make(value: Any) -> ResultBackend:
    from django.utils.module_loading import import_string

    if value is None:
        return DisabledBackend()
    if value == "django":
        return import_string(IMPLEMENTATIONS["django"])()
    problem = backend_problem(value)
    if problem is None and isinstance(value, str) and value.startswith(REDIS_SCHEMES):
        return import_string(IMPLEMENTATIONS["redis"])(value)
    alias = cache_alias(value)
    if problem is None and alias is not None:
        return import_string(IMPLEMENTATIONS["cache"])(alias)
    raise ImproperlyConfigured(f"TASKS_Q['RESULT_BACKEND'] = {mask_url(str(value))!r}: {problem}; {SUPPORTED}")


def is_exception_state(state: str) -> bool:
    return state in EXCEPTION_STATES
