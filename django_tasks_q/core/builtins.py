"""Tasks every worker has, named as Celery's so a Celery client's messages run here too.

``celery.map``, ``celery.starmap`` and ``celery.chunks`` run a whole loop in
one task: one message, one result (a list; a list of lists for chunks).
Imported by the app config's ``ready()``.
"""

from __future__ import annotations

from typing import Any

from .canvas import signature
from .task import task


@task(name="celery.map")
def xmap(task: dict, it: list) -> list:
    """``[task(item) for item in it]``, run here."""
    fun = signature(task).type
    return [fun(item) for item in it]


@task(name="celery.starmap")
def xstarmap(task: dict, it: list) -> list:
    """``[task(*item) for item in it]``, run here."""
    fun = signature(task).type
    return [fun(*item) for item in it]


@task(name="celery.chunks")
def chunks(task: dict, it: list, n: int) -> list[list[Any]]:
    """``it`` in parts of ``n`` items, each part as ``starmap``: a list of lists."""
    fun = signature(task).type
    items = list(it)
    return [[fun(*item) for item in items[start:start + n]] for start in range(0, len(items), n)]
