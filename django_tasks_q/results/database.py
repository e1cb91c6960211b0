"""The ORM result backend: one ``TaskResult`` row per task id.

Each state change is a single upsert that touches only the columns that
state owns, so RECEIVED, STARTED and SUCCESS cost one statement each and
never overwrite each other's dates. On SQLite and PostgreSQL the upsert is
one ``INSERT ... ON CONFLICT DO UPDATE`` whose SQL is built once from the
model's fields (values still go through each field's ``get_db_prep_save``);
``bulk_create(update_conflicts=True)`` compiles the same statement anew for
every call, which made it a third of a worker's time per task. Other
databases use ``bulk_create``.

Saved groups are ``GroupResultMeta`` rows; chords are counted on a
``ChordCounter`` row (``results/database_chords.py``).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from django.db import close_old_connections, connections, router
from django.db.utils import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone

if TYPE_CHECKING:
    from django.db.models import Field

    from ..core.protocol import TaskMessage

from ..core.states import READY_STATES, TaskState
from ..models import GroupResultMeta, TaskResult
from .backend import ResultBackend, ResultMeta

_COMMON = ("state", "task_name", "result", "traceback", "retries")
_BY_STATE: dict[str, tuple[str, ...]] = {
    TaskState.RECEIVED: ("date_received", "worker", "queue", "args", "kwargs"),
    # a task started at once was never written as RECEIVED: keep the receipt date if there is one
    TaskState.STARTED: ("date_started", "worker", "date_received"),
}
_DONE = ("date_done", "runtime", "worker")
_KEEP_EXISTING = {"date_received"}  # updated only when still empty
_UPSERT_VENDORS = {"sqlite", "postgresql"}


def _update_fields(state: str) -> tuple[str, ...]:
    return _COMMON + _BY_STATE.get(state, _DONE if state in READY_STATES else ())


@lru_cache(maxsize=32)
def _upsert_sql(alias: str, update: tuple[str, ...]) -> tuple[str, list]:
    connection = connections[alias]
    quote = connection.ops.quote_name
    table = quote(TaskResult._meta.db_table)
    fields = [f for f in TaskResult._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(quote(cast(str, f.column)) for f in fields)  # concrete fields have a column
    placeholders = ", ".join(["%s"] * len(fields))
    assignments = []
    for name in update:
        field = cast("Field[Any, Any]", TaskResult._meta.get_field(name))  # update names are concrete fields
        column = quote(cast(str, field.column))
        if name in _KEEP_EXISTING:
            assignments.append(f"{column} = COALESCE({table}.{column}, EXCLUDED.{column})")
        else:
            assignments.append(f"{column} = EXCLUDED.{column}")
    sql = (f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) "
           f"ON CONFLICT ({quote('task_id')}) DO UPDATE SET {', '.join(assignments)}")
    return sql, fields


class DatabaseBackend(ResultBackend):
    def mark(self, task_id: str, state: str, *, result: Any = None, traceback: str = "",
             request: Any = None, task_name: str = "", runtime: float | None = None) -> None:
        now = timezone.now()
        row = TaskResult(task_id=task_id, state=state, result=result, traceback=traceback or "",
                         task_name=task_name or getattr(request, "task", "") or "", runtime=runtime,
                         date_created=now)
        if request is not None:
            row.args = list(request.args)
            row.kwargs = dict(request.kwargs)
            row.worker = request.hostname or ""
            row.queue = (request.delivery_info or {}).get("queue") or ""
            row.retries = request.retries
            row.parent_id = request.parent_id or ""
            row.root_id = request.root_id or ""
            row.group_id = request.group_id or ""
        if state in (TaskState.RECEIVED, TaskState.STARTED):
            row.date_received = now
        if state == TaskState.STARTED:
            row.date_started = now
        elif state in READY_STATES:
            row.date_done = now
        try:
            self._write(row, _update_fields(state))
        except (InterfaceError, OperationalError):
            close_old_connections()  # a dropped connection: retry once on a fresh one
            self._write(row, _update_fields(state))

    def _write(self, row: Any, update: tuple[str, ...]) -> None:
        alias = router.db_for_write(type(row))
        connection = connections[alias]
        if connection.vendor not in _UPSERT_VENDORS:
            type(row).objects.using(alias).bulk_create([row], update_conflicts=True, unique_fields=["task_id"],
                                                       update_fields=list(update))
            return
        sql, fields = _upsert_sql(alias, update)
        params = [field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    def meta(self, task_id: str) -> ResultMeta | None:
        row = (TaskResult.objects.filter(task_id=task_id)
               .values("state", "result", "traceback", "date_done", "task_name", "retries").first())
        if row is None:
            return None
        return ResultMeta(task_id=task_id, **row)

    def forget(self, task_id: str) -> None:
        TaskResult.objects.filter(task_id=task_id).delete()

    def cleanup(self, older_than: datetime) -> int:
        deleted, _ = TaskResult.objects.filter(state__in=READY_STATES, date_done__lt=older_than).delete()
        return deleted

    # -- groups: one GroupResultMeta row each ----------------------------
    def save_group(self, group_id: str, task_ids: list[str]) -> None:
        """Keep a group's ordered member ids, for ``GroupResult.restore``."""
        GroupResultMeta.objects.update_or_create(group_id=group_id, defaults={"result_ids": list(task_ids)})

    def restore_group(self, group_id: str) -> list[str] | None:
        row = GroupResultMeta.objects.filter(group_id=group_id).values("result_ids").first()
        return None if row is None else list(row["result_ids"])

    def delete_group(self, group_id: str) -> None:
        GroupResultMeta.objects.filter(group_id=group_id).delete()

    # -- chords: one ChordCounter row each (results/database_chords.py) --
    counts_chords = True

    def start_chord(self, group_id: str, body: dict, result_ids: list[str]) -> None:
        from . import database_chords

        database_chords.start_chord(group_id, body, result_ids)

    def on_chord_part_return(self, message: TaskMessage, state: str, retval: Any) -> None:
        from . import database_chords

        database_chords.on_chord_part_return(message, state, retval, self)


__all__ = ["DatabaseBackend", "DatabaseError"]
