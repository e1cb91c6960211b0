"""Revoking tasks, on the client side: one row per task id that every worker reads.

``revoke()`` (behind ``AsyncResult.revoke()``, ``manage.py taskcontrol
revoke`` and the remote-control ``revoke`` command) stores one
:class:`~django_tasks_q.models.Revocation` row per task id, kept for
``REVOKE_EXPIRES`` seconds, and marks a result that is not ready yet
REVOKED. Nothing is broadcast: a row in the database is what makes a revoke
survive the restart of every worker, and a worker that starts later still
sees it. How workers read the rows is :mod:`django_tasks_q.worker.revocations`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from signal import Signals
from typing import Any

from django.utils import timezone

from ..conf import settings
from ..exceptions import TaskRevokedError
from .states import TaskState


def parse_signal(value: str | int) -> Signals:
    """``"SIGKILL"``, ``"KILL"``, ``"kill"`` or ``9`` -> ``Signals.SIGKILL``; anything else is a clear error."""
    text = str(value).strip().upper()
    try:
        if text.isdigit():
            return Signals(int(text))
        return Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        known = ", ".join(s.name for s in (Signals.SIGTERM, Signals.SIGKILL, Signals.SIGINT, Signals.SIGQUIT,
                                              Signals.SIGUSR1))
        raise ValueError(f"unknown signal {value!r} for revoke(terminate=True); use a name such as {known}") from None


def revoke(task_ids: Iterable[str], *, terminate: bool = False, signal: str | int = "SIGTERM",
           reason: str = "") -> list[Any]:
    """Store a revoke for each id and mark its result REVOKED unless it is already ready.

    Re-revoking an id refreshes its row (and its expiry); ``terminate`` then
    reaches workers as a new revoke would.
    """
    from ..models import Revocation

    signum = parse_signal(signal)
    ids = [str(task_id) for task_id in task_ids]
    if not ids or not all(ids):
        raise ValueError(f"revoke needs one or more task ids, got {ids!r}")
    now = timezone.now()
    expires_at = now + timedelta(seconds=settings.REVOKE_EXPIRES)
    rows = []
    for task_id in ids:
        row, _ = Revocation.objects.update_or_create(
            task_id=task_id,
            defaults={"terminate": terminate, "signal": signum.name, "reason": reason[:255],
                      "created_at": now, "expires_at": expires_at})
        rows.append(row)
        _mark_revoked(task_id)
    return rows


def _mark_revoked(task_id: str) -> None:
    from ..results.backend import describe_exception, get_backend

    backend = get_backend()
    meta = backend.meta(task_id)
    if meta is not None and meta.ready:  # SUCCESS and FAILURE are facts; a revoke does not rewrite them
        return
    backend.mark(task_id, TaskState.REVOKED, result=describe_exception(TaskRevokedError("revoked")),
                 task_name=meta.task_name if meta is not None else "")


__all__ = ["parse_signal", "revoke"]
