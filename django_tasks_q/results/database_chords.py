"""Chord counting in the database: one ``ChordCounter`` row per chord, for ``RESULT_BACKEND = "django"``.

No task polls for the header. The caller creates the row (``start_chord``:
the member count, the body, the members' task ids in header order) before
sending the members; each member message carries the body in the protocol
v2 ``embed["chord"]`` and the group id in its ``group`` header. When a
member succeeds, its worker runs ``UPDATE ... SET done = done + 1`` and
reads the new value in the same transaction (the row stays locked until
commit), so exactly one worker sees ``done == total``: it reads the
members' results in header order and sends the body with them as its first
argument, then deletes the row. The first member to fail (or be revoked)
flips ``failed`` with a conditional UPDATE and records the body as FAILURE
with a ``ChordError`` naming the member, then sends the body's
``link_error``; the body never runs. A member that retries has not
finished: only its last attempt counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.db import router, transaction
from django.db.models import F

from ..core.states import TaskState
from ..models import ChordCounter, TaskResult
from .chord_body import chord_members_ahead, fail_for_member, send_body

if TYPE_CHECKING:
    from ..core.protocol import TaskMessage
    from .backend import ResultBackend

logger = logging.getLogger(__name__)

_FAILED = (TaskState.FAILURE, TaskState.REVOKED)


def start_chord(group_id: str, body: dict, result_ids: list[str]) -> None:
    """The chord's counter, written before any member is sent."""
    ChordCounter.objects.create(group_id=group_id, total=len(result_ids), body=body, result_ids=list(result_ids))


def on_chord_part_return(message: TaskMessage, state: str, retval: Any, backend: ResultBackend) -> None:
    """Count a finished chord member; fire or fail the body when this member decides it."""
    if not message.chord or not message.group_id:
        if state in _FAILED and message.chain:
            _fail_chords_ahead(message, retval, backend)
        return
    if state == TaskState.SUCCESS:
        counter = increment(message.group_id)
        if counter is None:
            _no_counter(message)
        elif not counter["failed"] and counter["done"] == counter["total"]:
            _fire(counter, backend)
    elif state in _FAILED:
        if _first_failure(message.group_id):
            _fail_chord(message, message.chord, retval, backend, message.group_id)


def _fail_chords_ahead(message: TaskMessage, retval: Any, backend: ResultBackend) -> None:
    """A chain that is a chord member failed before its last step: that step will never be counted."""
    for options in chord_members_ahead(message):
        if _first_failure(options["group_id"]):
            _fail_chord(message, options["chord"], retval, backend, options["group_id"])


def increment(group_id: str) -> Mapping[str, Any] | None:
    """``done + 1`` on the chord's row and the row as it is now; None when there is no row."""
    with transaction.atomic(using=router.db_for_write(ChordCounter)):
        if not ChordCounter.objects.filter(group_id=group_id).update(done=F("done") + 1):
            return None
        # read inside the transaction: our UPDATE holds the row lock until commit, so no other
        # increment lands between it and this read, and only one worker can read done == total
        return ChordCounter.objects.filter(group_id=group_id).values(
            "group_id", "done", "total", "failed", "result_ids", "body").get()


def _first_failure(group_id: str) -> bool:
    return ChordCounter.objects.filter(group_id=group_id, failed=False).update(failed=True) == 1


def header_results(result_ids: list[str]) -> list[Any]:
    """The members' stored return values, in header order (None for a member whose result was not kept)."""
    found = dict(TaskResult.objects.filter(task_id__in=result_ids).values_list("task_id", "result"))
    return [found.get(task_id) for task_id in result_ids]


def _fire(counter: Mapping[str, Any], backend: ResultBackend) -> None:
    if send_body(counter["body"], header_results(counter["result_ids"]), counter["group_id"], backend):
        ChordCounter.objects.filter(group_id=counter["group_id"]).delete()


def _fail_chord(message: TaskMessage, body: dict, retval: Any, backend: ResultBackend, group_id: str) -> None:
    fail_for_member(body, group_id, f"{message.task}[{message.id}]", retval, backend)


def _no_counter(message: TaskMessage) -> None:
    """A member of a chord whose counter is gone (already fired, or sent by another client)."""
    logger.error("task %s[%s] is a member of chord %s but no ChordCounter row exists for it "
                 "(body already sent, a redelivered member, or a chord created outside django-tasks-q); "
                 "not counted", message.task, message.id, message.group_id)


__all__ = ["header_results", "increment", "on_chord_part_return", "start_chord"]
