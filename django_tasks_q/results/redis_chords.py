"""Chord counting in Redis, on Celery's chord keys, so either kind of worker can count a member.

With ``RESULT_BACKEND = "redis://..."`` a chord's state lives where Celery's
Redis backend keeps it, next to the group key ``celery-taskset-meta-<gid>``:

* ``.s`` the header size, written by the caller before any member is sent;
* ``.j`` a sorted set of ``[1, task_id, state, result]`` by header index;
* ``.d`` the ``task_id:index`` pairs already counted (a redelivered member counts once);
* ``.t`` members added to the header later (Celery's ``Task.add_to_chord`` increments it);
* ``.c`` the claim of the worker that sends the body, then ``"done"``.

Each finished member is added and counted in one Lua script, which also
takes the claim when the count reaches the size: exactly one worker, ours
or Celery's, sees the header complete. That worker reads ``.j`` in header
order and sends the body with the results -- or, when a member failed,
records the body as FAILURE with a ``ChordError`` naming it (Celery's rule:
the chord fails once every member has finished).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from ..conf import settings
from ..core.states import PROPAGATE_STATES, TaskState
from ..exceptions import ChordError
from ..lua import load_script
from .backend import describe_exception
from .chord_body import chord_members_ahead, record_body_failure, send_body
from .redis_keys import group_key

if TYPE_CHECKING:
    from .redis import RedisBackend

logger = logging.getLogger(__name__)

_FAILED = (TaskState.FAILURE, TaskState.REVOKED)
_COUNTED = (TaskState.SUCCESS, *_FAILED)
CLAIM_SECONDS = 60
DONE_SECONDS = 300

#: Count one finished member, and claim the body when it completes the header (``lua/chord_part_return.lua``).
PART_RETURN = load_script(__name__, "chord_part_return.lua")

_scripts: dict[int, Any] = {}


def _keys(group_id: str) -> list[str]:
    base = group_key(group_id)
    return [base + ".j", base + ".d", base + ".s", base + ".t", base + ".c"]


def start_chord(backend: RedisBackend, group_id: str, size: int) -> None:
    """Write the header size (and forget a previous run's claim) before the members are sent."""
    jkey, dkey, skey, tkey, ckey = _keys(group_id)
    expires = int(settings.RESULT_EXPIRES or 0)
    with backend.client.pipeline(transaction=True) as pipe:
        pipe.delete(ckey, jkey, dkey, tkey)
        pipe.set(skey, size, ex=expires or None)
        pipe.execute()


def on_chord_part_return(message: Any, state: str, retval: Any, backend: RedisBackend) -> None:
    """Count one finished member message (its ``group`` header, ``group_index`` and ``embed["chord"]``)."""
    if message.chord and message.group_id and state in _COUNTED:
        count_member(backend, message.group_id, message.id, message.group_index, message.chord, state, retval)
    elif state in _FAILED and message.chain:
        for options in chord_members_ahead(message):
            if options.get("task_id"):
                count_member(backend, options["group_id"], options["task_id"], options.get("group_index"),
                             options["chord"], state, retval)


def count_member(backend: RedisBackend, group_id: str, task_id: str, group_index: int | None, body: dict,
                 state: str, retval: Any) -> None:
    """Add one member's outcome to ``.j``; the call that completes the header sends (or fails) the body."""
    result = describe_exception(retval) if isinstance(retval, BaseException) else retval
    index = group_index if group_index is not None else "+inf"
    keys = _keys(group_id)
    token = uuid.uuid4().hex
    count, size, claimed = _script(backend)(keys=keys, args=[f"{task_id}:{index}", index,
                                                             json.dumps([1, task_id, state, result]),
                                                             int(settings.RESULT_EXPIRES or 0), token, CLAIM_SECONDS])
    if count == -1:
        logger.info("chord %s: member %s finished after the body was sent; not counted again", group_id, task_id)
        return
    if size is None:  # nobody wrote .s: the body can never be sent from these keys -- say so, never drop silently
        logger.error("chord %s: member %s counted but the chord has no size key %s (sent with another "
                     "RESULT_BACKEND, expired, or already failed on a Celery worker); its body %s is not sent "
                     "from here", group_id, task_id, keys[2], (body or {}).get("task"))
        return
    if not claimed:
        return
    members = [json.loads(raw) for raw in backend.client.zrange(keys[0], 0, -1)]
    try:
        failed = next((m for m in members if m[2] in PROPAGATE_STATES), None)
        if failed is not None:
            error = ChordError(f"chord {group_id}: member {failed[1]} ended {failed[2]}: "
                               f"{_describe(failed[3])}")
            logger.error("%s", error)
            record_body_failure(body, error, backend)
        else:
            send_body(body, [m[3] for m in members], group_id, backend)
    finally:
        _cleanup(backend, keys, token)


def _script(backend: RedisBackend) -> Any:
    """The part-return script, registered once per client (redis-py then calls it by its SHA)."""
    client = backend.client
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts.setdefault(id(client), client.register_script(PART_RETURN))
    return script


def _cleanup(backend: RedisBackend, keys: list[str], token: str) -> None:
    jkey, dkey, skey, tkey, ckey = keys
    if backend.client.get(ckey) == token.encode():
        with backend.client.pipeline(transaction=True) as pipe:
            pipe.delete(jkey, dkey, skey, tkey)
            pipe.set(ckey, "done", ex=DONE_SECONDS)
            pipe.execute()


def _describe(result: Any) -> str:
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message")
        text = ", ".join(map(str, message)) if isinstance(message, list) else str(message)
        return f"{result['exc_type']}: {text}"
    return repr(result)


__all__ = ["count_member", "on_chord_part_return", "start_chord"]
