"""The name -> task registry every process fills by autodiscovery."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..exceptions import ImproperlyConfigured, NotRegistered

if TYPE_CHECKING:
    from .task import Task


class Registry:
    """Maps task names to tasks; an unknown name is a ``NotRegistered`` with a hint."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(self, task: Task) -> Task:
        existing = self._tasks.get(task.name)
        if existing is not None and existing.qualified_function != task.qualified_function:
            raise ImproperlyConfigured(
                f"task name {task.name!r} is used by both {existing.qualified_function} "
                f"and {task.qualified_function}; give one of them name=..."
            )
        self._tasks[task.name] = task
        return task

    def unregister(self, name: str) -> None:
        self._tasks.pop(name, None)

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._tasks, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise NotRegistered(
                f"no task named {name!r} is registered in this process{hint} "
                "(is its app in INSTALLED_APPS and the task in the app's tasks.py?)"
            ) from None

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self, include_internal: bool = False) -> list[str]:
        return [n for n in self if include_internal or not n.startswith("django_tasks_q.")]


registry = Registry()
