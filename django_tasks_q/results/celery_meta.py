"""Celery's JSON documents for a task's state and a saved group, written and read by two backends.

The Redis backend (``results/redis.py``) and the cache backend
(``results/cache.py``) store the same text: what Celery's Redis backend
writes under ``celery-task-meta-<id>`` and ``celery-taskset-meta-<id>``.
Encoding lives here once so that the two cannot drift apart, and so that a
result Celery stored reads the same through either.

Encoding is ``json.dumps`` with no fallback: a value that is not JSON raises
``TypeError`` (or ``ValueError``) from ``encode_meta``, before anything is
written -- the worker's executor turns that into a FAILURE with an
``EncodeError`` naming the task.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ..core.states import READY_STATES
from .backend import ResultMeta


def meta_document(task_id: str, state: str, result: Any, traceback: str, request: Any,
                  task_name: str) -> dict[str, Any]:
    """Celery's ``_get_result_meta`` fields, with ``result_extended``'s request fields."""
    done = datetime.now(timezone.utc).isoformat() if state in READY_STATES else None
    document: dict[str, Any] = {"status": state, "result": result, "traceback": traceback or None,
                                "children": [], "date_done": done, "task_id": task_id}
    if request is not None:
        if getattr(request, "group_id", None):
            document["group_id"] = request.group_id
        if getattr(request, "parent_id", None):
            document["parent_id"] = request.parent_id
        document.update(name=task_name or request.task, args=list(request.args or ()),
                        kwargs=dict(request.kwargs or {}), worker=request.hostname, retries=request.retries,
                        queue=(request.delivery_info or {}).get("routing_key"))
    elif task_name:
        document["name"] = task_name
    return document


def encode_meta(task_id: str, state: str, result: Any = None, traceback: str = "", request: Any = None,
                task_name: str = "") -> str:
    """The JSON text of one state; raises ``TypeError`` / ``ValueError`` when ``result`` is not JSON."""
    return json.dumps(meta_document(task_id, state, result, traceback, request, task_name))


def decode_meta(task_id: str, raw: bytes | str | None) -> ResultMeta | None:
    """What ``encode_meta`` (ours or Celery's) wrote; None for no value."""
    if raw is None:
        return None
    document = json.loads(raw)
    done = document.get("date_done")
    return ResultMeta(task_id=task_id, state=document.get("status") or "PENDING", result=document.get("result"),
                      traceback=document.get("traceback") or "",
                      date_done=as_datetime(done) if done else None,
                      task_name=document.get("name") or "", retries=document.get("retries") or 0)


def encode_group(group_id: str, task_ids: list[str]) -> str:
    """Celery's ``GroupResult.as_tuple()``: ``{"result": [[group_id, null], [[[task_id, null], null], ...]]}``."""
    return json.dumps({"result": [[group_id, None], [[[task_id, None], None] for task_id in task_ids]]})


def decode_group(raw: bytes | str) -> list[str]:
    """The member ids of a saved group, in order (a nested group counts as its own id)."""
    return [_member_id(member) for member in json.loads(raw)["result"][1]]


def _member_id(member: Any) -> str:
    """A member of a saved group: ``[[id, parent], None]`` (a task) or a nested group's tuple."""
    head = member[0]
    return str(head[0] if isinstance(head, list) else head)


def as_datetime(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


__all__ = ["as_datetime", "decode_group", "decode_meta", "encode_group", "encode_meta", "meta_document"]
