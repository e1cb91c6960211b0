"""Chord accounting in the worker: the last header member to finish sends the body.

No task polls for the header. Each member message carries the body in the
protocol v2 ``embed["chord"]`` and the group id in its ``group`` header; the
caller created a ``ChordCounter`` row for that group. When a member
succeeds, its worker runs ``UPDATE ... SET done = done + 1`` and reads the
new value in the same transaction (the row stays locked until commit), so
exactly one worker sees ``done == total``: it reads the members' results in
header order and sends the body with them as its first argument. The first
member to fail (or be revoked) flips ``failed`` with a conditional UPDATE
and records the body as FAILURE with a ``ChordError`` naming the member,
then sends the body's ``link_error``; the body never runs. A member that
retries has not finished: only its last attempt counts.

With the Redis result backend the counting happens on Celery's chord keys
instead (``results/redis_chords.py``), so Celery workers and ours can share
one chord's header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.db.models import F

from ..core import context
from ..core.protocol import TaskMessage
from ..core.states import TaskState
from ..exceptions import ChordError
from ..results.backend import describe_exception

logger = logging.getLogger(__name__)

_FAILED = (TaskState.FAILURE, TaskState.REVOKED)
_COUNTED = (TaskState.SUCCESS, *_FAILED)


def on_member_finished(message: TaskMessage, state: str, retval: Any, request: Any, backend: Any) -> None:
    """Count a finished chord member; fire or fail the body when this member decides it."""
    from ..results.redis import RedisBackend

    if isinstance(backend, RedisBackend):  # Celery's chord keys in Redis (results/redis_chords.py)
        from ..results import redis_chords

        if message.chord and message.group_id and state in _COUNTED:
            redis_chords.on_member_finished(message, state, retval, backend)
        elif state in _FAILED and message.chain:
            # a chain that is a chord member failed before its last step, which will never run: count
            # that step as failed now (as Celery does), or the chord would wait for it forever
            for step in message.chain:
                options = (step.get("options") or {}) if isinstance(step, dict) else {}
                if options.get("group_id") and options.get("task_id") and isinstance(options.get("chord"), dict):
                    redis_chords.count_member(backend, options["group_id"], options["task_id"],
                                              options.get("group_index"), options["chord"], state, retval)
        return
    if not message.chord or not message.group_id:
        if state in _FAILED and message.chain:
            _fail_chords_ahead(message, retval, backend)
        return
    if state == TaskState.SUCCESS:
        counter = _increment(message.group_id)
        if counter is None:
            _no_counter(message, backend)
        elif not counter["failed"] and counter["done"] == counter["total"]:
            _fire(counter, backend)
    elif state in _FAILED:
        if _first_failure(message.group_id):
            _fail_chord(message, message.chord, retval, backend, message.group_id)


def _fail_chords_ahead(message: TaskMessage, retval: Any, backend: Any) -> None:
    """A chain that is a chord member failed before its last step: that step will never be counted."""
    for step in message.chain or []:
        options = step.get("options") or {} if isinstance(step, dict) else {}
        group_id, body = options.get("group_id"), options.get("chord")
        if group_id and isinstance(body, dict) and _first_failure(group_id):
            _fail_chord(message, body, retval, backend, group_id)


def _increment(group_id: str) -> Mapping[str, Any] | None:
    from ..models import ChordCounter

    with transaction.atomic(using=_alias()):
        if not ChordCounter.objects.filter(group_id=group_id).update(done=F("done") + 1):
            return None
        # read inside the transaction: our UPDATE holds the row lock until commit, so no other
        # increment lands between it and this read, and only one worker can read done == total
        return ChordCounter.objects.filter(group_id=group_id).values(
            "group_id", "done", "total", "failed", "result_ids", "body").get()


def _first_failure(group_id: str) -> bool:
    from ..models import ChordCounter

    return ChordCounter.objects.filter(group_id=group_id, failed=False).update(failed=True) == 1


def _alias() -> str:
    from django.db import router

    from ..models import ChordCounter

    return router.db_for_write(ChordCounter)


def header_results(result_ids: list[str]) -> list[Any]:
    """The members' stored return values, in header order (None for a member whose result was not kept)."""
    from ..models import TaskResult

    found = dict(TaskResult.objects.filter(task_id__in=result_ids).values_list("task_id", "result"))
    return [found.get(task_id) for task_id in result_ids]


def _fire(counter: Mapping[str, Any], backend: Any) -> None:
    from ..core.canvas import signature
    from ..models import ChordCounter

    body = counter["body"]
    try:
        signature(body).apply_async((header_results(counter["result_ids"]),))
    except Exception as exc:  # the body could not be sent: a recorded failure, never a silent drop
        logger.exception("chord %s: could not send its body %s", counter["group_id"], body.get("task"))
        record_body_failure(body, ChordError(f"chord {counter['group_id']}: could not send body "
                                              f"{body.get('task')}: {type(exc).__name__}: {exc}"), backend)
        return
    ChordCounter.objects.filter(group_id=counter["group_id"]).delete()


def _fail_chord(message: TaskMessage, body: dict, retval: Any, backend: Any, group_id: str) -> None:
    cause = f"{type(retval).__name__}: {retval}" if isinstance(retval, BaseException) else str(retval)
    error = ChordError(f"chord member {message.task}[{message.id}] failed: {cause}")
    logger.error("chord %s failed: %s", group_id, error)
    record_body_failure(body, error, backend)


def record_body_failure(body: dict, error: ChordError, backend: Any) -> None:
    from .workflow import call_errbacks

    options = body.get("options") or {}
    # a chain body: every step fails (none will run); its first step's id names the failure for errbacks
    steps = (body.get("kwargs") or {}).get("tasks") if body.get("subtask_type") == "chain" else [body]
    body_id = None
    for step in steps or []:
        step_id = (step.get("options") or {}).get("task_id")
        if step_id:
            body_id = body_id or step_id
            backend.mark(step_id, TaskState.FAILURE, result=describe_exception(error), traceback=str(error),
                         task_name=step.get("task") or "")
    request = context.Request(id=body_id, task=body.get("task"), root_id=options.get("root_id") or body_id)
    errbacks = options.get("link_error") or []
    if isinstance(errbacks, dict):  # a Celery client's signature(..., link_error=sig) keeps a single one
        errbacks = [errbacks]
    call_errbacks(list(errbacks), request, error, str(error))


def _no_counter(message: TaskMessage, backend: Any) -> None:
    """A member of a chord whose counter is gone (already fired, or sent by another client)."""
    logger.error("task %s[%s] is a member of chord %s but no ChordCounter row exists for it "
                 "(body already sent, a redelivered member, or a chord created outside django-tasks-q); "
                 "not counted", message.task, message.id, message.group_id)
