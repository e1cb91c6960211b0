"""``GroupResult``: the caller's handle on the members of a group, in order.

The group itself has no state of its own: every answer is computed from the
members' ``AsyncResult``s. ``save()`` stores the ordered member ids in a
``GroupResultMeta`` row (or, with the Redis backend, Celery's
``celery-taskset-meta-<id>`` key) so another process can
``GroupResult.restore(id)``.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from ..core.states import TaskState
from ..exceptions import TimeoutError
from .async_result import AsyncResult
from .backend import get_backend


class GroupResult:
    """The results of a group's members, in the order the group listed them."""

    def __init__(self, id: str, results: Iterable[AsyncResult] = ()):  # noqa: A002 - Celery's name
        self.id = str(id)
        self.results: list[AsyncResult] = list(results)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupResult) and other.id == self.id and other.results == self.results

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def children(self) -> list[AsyncResult]:
        return self.results

    # -- state ----------------------------------------------------------
    def completed_count(self) -> int:
        """How many members finished successfully (Celery's meaning)."""
        return sum(1 for r in self.results if r.successful())

    def ready(self) -> bool:
        """True when every member has finished, whatever the outcome."""
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        """True while some member has not finished."""
        return not self.ready()

    @property
    def state(self) -> str:
        """SUCCESS when all succeeded, FAILURE if any failed, else PENDING (a convenience)."""
        if self.failed():
            return TaskState.FAILURE
        return TaskState.SUCCESS if self.successful() else TaskState.PENDING

    # -- outcome --------------------------------------------------------
    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.1) -> list[Any]:
        """Wait for every member; their values in group order.

        With ``propagate`` the first failed member (in group order) re-raises
        its exception; without, the exception object stands in its place.
        ``timeout`` bounds the whole wait, not each member.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0 and not result.ready():
                raise TimeoutError(f"group {self.id} not ready after {timeout}s "
                                   f"({self.completed_count()}/{len(self.results)} succeeded)")
            try:
                values.append(result.get(timeout=None if remaining is None else max(remaining, 0.001),
                                         propagate=propagate, interval=interval))
            except TimeoutError:
                raise TimeoutError(f"group {self.id} not ready after {timeout}s "
                                   f"({self.completed_count()}/{len(self.results)} succeeded)") from None
        return values

    join = get

    def forget(self) -> None:
        for result in self.results:
            result.forget()
        get_backend().delete_group(self.id)

    # -- persistence ----------------------------------------------------
    def save(self) -> "GroupResult":
        """Store the ordered member ids, so ``GroupResult.restore(self.id)`` works in any process."""
        get_backend().save_group(self.id, [r.id for r in self.results])
        return self

    @classmethod
    def restore(cls, group_id: str) -> "GroupResult | None":
        """The saved group ``group_id``, or ``None`` if it was never saved (as Celery)."""
        task_ids = get_backend().restore_group(group_id)
        if task_ids is None:
            return None
        return cls(group_id, [AsyncResult(task_id) for task_id in task_ids])

    def delete(self) -> None:
        get_backend().delete_group(self.id)
