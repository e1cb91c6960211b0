"""Chord counting in a Django cache, for ``RESULT_BACKEND = "cache"``: ``cache.add`` and ``cache.incr``.

A chord's keys sit next to its group key ``celery-taskset-meta-<gid>`` (our
own names, not Celery's chord keys, which need Redis's sorted sets):

* ``.ids`` the members' task ids in header order, written by the caller
  before any member is sent, with ``.count`` set to 0;
* ``.member.<task_id>`` each finished member's ``[state, result]``, written
  with ``add``: a redelivered member finds it there and is not counted again;
* ``.failed`` the first failed member, written with ``add``: only its worker
  records the body FAILURE (at once, as the ORM backend does);
* ``.count`` incremented with ``incr`` after each member: exactly one worker
  reads the header size back, and it sends the body with the members'
  results in header order (or, if a member failed, sends nothing), then
  deletes the chord's keys and leaves ``.done`` for ``DONE_SECONDS``, so a
  member redelivered after that is told apart from one whose chord is lost.

Counting every member, failed ones too, means the keys are deleted when the
header ends, whatever its outcome. ``add`` and ``incr`` are single atomic
commands with django-redis, Django's ``RedisCache`` and memcached; with
``LocMemCache`` they are atomic only within one process, with
``FileBasedCache`` and ``DatabaseCache`` not at all (``manage.py check``
warns, W005). Entries carry ``RESULT_EXPIRES``; a cache that evicts
``.count`` or ``.ids`` before the header ends loses the chord, which is
logged as an error, never dropped silently.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..core.states import TaskState
from ..exceptions import EncodeError
from .backend import describe_exception
from .chord_body import chord_members_ahead, fail_for_member, send_body
from .redis_keys import group_key

if TYPE_CHECKING:
    from ..core.protocol import TaskMessage
    from .cache import CacheBackend

logger = logging.getLogger(__name__)

_FAILED = (TaskState.FAILURE, TaskState.REVOKED)
_COUNTED = (TaskState.SUCCESS, *_FAILED)
#: how long ``.done`` outlives a finished header (a late redelivered member is then logged at INFO)
DONE_SECONDS = 300


def _keys(group_id: str) -> tuple[str, str, str, str]:
    base = group_key(group_id)
    return base + ".ids", base + ".count", base + ".failed", base + ".done"


def _member_key(group_id: str, task_id: str) -> str:
    return f"{group_key(group_id)}.member.{task_id}"


def start_chord(backend: CacheBackend, group_id: str, result_ids: list[str]) -> None:
    """The header's ids and a zero count, before the members are sent (a previous run's flags forgotten)."""
    ids_key, count_key, failed_key, done_key = _keys(group_id)
    cache, timeout = backend.cache, backend.timeout()
    cache.delete_many([failed_key, done_key])
    cache.set(ids_key, json.dumps(list(result_ids)), timeout)
    cache.set(count_key, 0, timeout)


def on_chord_part_return(message: TaskMessage, state: str, retval: Any, backend: CacheBackend) -> None:
    """Count one finished member message (its ``group`` header and ``embed["chord"]``)."""
    culprit = f"{message.task}[{message.id}]"
    if message.chord and message.group_id and state in _COUNTED:
        count_member(backend, message.group_id, message.id, message.chord, state, retval, culprit)
    elif state in _FAILED and message.chain:
        for options in chord_members_ahead(message):
            if options.get("task_id"):
                count_member(backend, options["group_id"], options["task_id"], options["chord"], state, retval,
                             culprit)


def count_member(backend: CacheBackend, group_id: str, task_id: str, body: dict, state: str, retval: Any,
                 culprit: str) -> None:
    """Record member ``task_id``'s outcome and count it; the count that completes the header decides."""
    cache, timeout = backend.cache, backend.timeout()
    ids_key, count_key, failed_key, done_key = _keys(group_id)
    outcome, state, retval = _outcome(state, retval, culprit)
    if not cache.add(_member_key(group_id, task_id), outcome, timeout):
        logger.info("chord %s: member %s was already counted (a redelivered message); not counted again",
                    group_id, task_id)
        return
    if state in _FAILED and cache.add(failed_key, culprit, timeout):  # before the count: the last one sees it
        fail_for_member(body, group_id, culprit, retval, backend)
    try:
        count = cache.incr(count_key)
    except ValueError:  # no counter
        _no_counter(backend, group_id, task_id, body, done_key)
        return
    raw_ids = cache.get(ids_key)
    if raw_ids is None:
        logger.error("chord %s: member %s counted but the member list %s is gone (evicted from the cache?); "
                     "its body %s is not sent", group_id, task_id, ids_key, body.get("task"))
        return
    ids = json.loads(raw_ids)
    if count != len(ids):
        return
    members = [_member_key(group_id, member_id) for member_id in ids]
    try:
        if cache.get(failed_key) is None:
            send_body(body, _results(cache.get_many(members), members, group_id), group_id, backend)
    finally:
        cache.delete_many([ids_key, count_key, failed_key, *members])
        cache.set(done_key, "done", DONE_SECONDS)


def _outcome(state: str, retval: Any, culprit: str) -> tuple[str, str, Any]:
    """The member's ``[state, result]`` as JSON, with the state and return value to count it as.

    A return value that is not JSON (a member whose own result was not stored: nothing checked it) fails
    the member rather than the counting: its chord fails naming it, and the header still finishes."""
    result = describe_exception(retval) if isinstance(retval, BaseException) else retval
    try:
        return json.dumps([state, result]), state, retval
    except (TypeError, ValueError) as exc:
        error = EncodeError(f"chord member {culprit} returned {type(retval).__name__}, which cannot be passed "
                            f"to the chord's body: {exc}")
        return json.dumps([TaskState.FAILURE, describe_exception(error)]), TaskState.FAILURE, error


def _results(found: dict[str, Any], members: list[str], group_id: str) -> list[Any]:
    """The members' results in header order; None (and a warning) for one the cache has lost."""
    results = []
    for key in members:
        raw = found.get(key)
        if raw is None:
            logger.warning("chord %s: the outcome %s is gone from the cache (evicted?); its body gets None for it",
                           group_id, key)
        results.append(None if raw is None else json.loads(raw)[1])
    return results


def _no_counter(backend: CacheBackend, group_id: str, task_id: str, body: dict, done_key: str) -> None:
    if backend.cache.get(done_key) is not None:
        logger.info("chord %s: member %s finished after the body was sent; not counted again", group_id, task_id)
        return
    logger.error("chord %s: member %s finished but the chord has no counter (sent while RESULT_BACKEND was "
                 "another backend, or expired or evicted from the cache); its body %s is not sent from here",
                 group_id, task_id, body.get("task"))


__all__ = ["count_member", "on_chord_part_return", "start_chord"]
