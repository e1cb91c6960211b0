"""What staff can do to tasks and queues from a page: send again, revoke, purge.

Shared by the admin actions, the dashboard and the JSON API, so each does
exactly the same thing whichever button was pressed.
"""

from __future__ import annotations

from typing import Any

from ..models import TaskResult


def send_again(row: TaskResult) -> Any:
    """Send the task recorded in ``row`` anew, by name, with its stored arguments and queue (a new id).

    ``None`` when the row has no task name to send (a refused message recorded only by id).
    """
    from ..core.calling import send_task

    if not row.task_name:
        return None
    return send_task(row.task_name, list(row.args or []), dict(row.kwargs or {}),
                     **({"queue": row.queue} if row.queue else {}))


def revoke(task_ids: list[str], *, terminate: bool = False, who: str = "") -> None:
    """Store a revoke for each id (as ``taskcontrol revoke``); running workers see it within about a second."""
    from ..core.revoking import revoke as store_revoke

    store_revoke(task_ids, terminate=terminate, reason=who)


def purge(name: str) -> int:
    """Delete every message waiting in queue ``name`` on the broker; how many went.

    Tasks a worker already holds or that are parked until their eta are not
    in the queue and are not touched (as ``taskpurge``). Nothing is
    declared: a queue the broker does not have (RabbitMQ answers 404) held
    nothing, and purging makes no queue, exchange or binding. Which names
    may be purged is the caller's to decide (the API takes known queues only).
    """
    from ..broker.connection import new_connection

    with new_connection() as connection:
        channel = connection.channel()
        try:
            return int(channel.queue_purge(name) or 0)
        except connection.channel_errors as exc:
            if getattr(exc, "code", None) == 404:
                return 0
            raise
