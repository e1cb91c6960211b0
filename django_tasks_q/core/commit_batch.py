"""``delay_on_commit()`` in batches: the sends a transaction registers in a row go out together after it commits.

A view that saves a hundred rows and calls ``delay_on_commit()`` for each
used to send a hundred messages one by one after the commit; on RabbitMQ
each waited for its publisher confirm (about a millisecond). Now the calls
registered one after another go out as ``apply_async_many()`` does: on
Redis pipelined, on RabbitMQ with their confirms read once per batch, on
``django://`` in multi-row inserts.

Django's rules still decide what is sent. Each call registers an
``on_commit`` callback of its own, so a rolled-back savepoint drops the
calls made inside it, and a rolled-back transaction drops them all. When
the transaction commits, those callbacks only collect their calls; a
second callback registered after each call, with no savepoint of its own
(so none drops it), sends what was collected when it is the batch's last.
A callback of anyone else's registered between two calls ends the batch:
the order in which Django runs ``on_commit`` callbacks is kept, and so is
the order of the sends. (A task class that overrides ``apply_async`` is
sent through it, one call at a time: ``Task.delay_on_commit`` does not
batch it.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db import transaction

from .calling import send_many

if TYPE_CHECKING:
    from .task import Task

#: The attribute of a Django connection holding its open batch.
BATCH_ATTRIBUTE = "tasks_q_commit_batch"


class _Batch:
    """The calls registered in a row on one connection, and its send callbacks (one per call)."""

    def __init__(self) -> None:
        self.collected: list[tuple[Task, tuple, dict]] = []  # calls whose own callback ran (not rolled back)
        self.registered = 0  # send callbacks registered ...
        self.ran = 0  # ... and run: the last one sends
        self.send: Callable[[], None] = self._send_when_last  # one object, so the connection's list can be checked

    def _send_when_last(self) -> None:
        self.ran += 1
        if self.ran == self.registered:
            calls, self.collected = self.collected, []
            send_in_runs(calls)


def delay_on_commit(task: Task, args: tuple, kwargs: dict, using: str | None = None) -> None:
    """Send ``task(*args, **kwargs)`` once the transaction on ``using`` commits, with the calls registered
    right before and after it; at once outside a transaction (as ``on_commit`` would)."""
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:  # Django's rules: at once in autocommit, an error in manual transactions
        transaction.on_commit(lambda: task.apply_async(args, kwargs), using)
        return
    batch = getattr(connection, BATCH_ATTRIBUTE, None)
    pending = connection.run_on_commit
    if batch is None or not pending or pending[-1][1] is not batch.send:
        batch = _Batch()  # the first call of this transaction, or someone else's callback came in between
        setattr(connection, BATCH_ATTRIBUTE, batch)
    call = (task, args, kwargs)
    transaction.on_commit(lambda: batch.collected.append(call), using)
    # an entry as Django's on_commit makes it: (the savepoints it belongs to, callback, robust); in none, so
    # no savepoint rollback drops it
    connection.run_on_commit.append((set(), batch.send, False))
    batch.registered += 1


def send_in_runs(calls: list[tuple[Task, tuple, dict]]) -> None:
    """Send ``calls`` in order: each run of calls of the same task in one ``apply_async_many()``, a run of
    one by ``apply_async``."""
    start = 0
    while start < len(calls):
        task = calls[start][0]
        end = start + 1
        while end < len(calls) and calls[end][0] is task:
            end += 1
        if end - start == 1:
            task.apply_async(calls[start][1], calls[start][2])
        else:
            send_many(task.name, [(args, kwargs) for _, args, kwargs in calls[start:end]], {}, task=task)
        start = end
