"""A delivery that arrives while the worker handles another is handled after it, never inside it.

py-amqp delivers the next message from inside any wait for a broker reply
(a dead-letter copy, parking); handled there, two waits on one channel took
each other's replies and hung. What cannot be produced on demand is the
timing, so the re-entry is made by the handler itself.
"""

from __future__ import annotations

import pytest

from django_tasks_q.worker.worker import Worker

pytestmark = pytest.mark.django_db


def test_a_delivery_made_during_another_is_handled_after_it():
    worker = Worker(queues=["deliveries"], pool="solo", hostname="deliveries@host", heartbeat=0)
    order: list[str] = []

    def handle(name: str) -> None:
        order.append(f"start {name}")
        if name == "first":  # the broker delivers two more while the first waits for a reply
            deliver("second")
            deliver("third")
        order.append(f"end {name}")

    deliver = worker.one_at_a_time(handle)
    deliver("first")
    assert order == ["start first", "end first", "start second", "end second", "start third", "end third"]


def test_a_failing_delivery_leaves_the_next_ones_for_later_not_lost():
    worker = Worker(queues=["deliveries"], pool="solo", hostname="deliveries@host", heartbeat=0)
    handled: list[str] = []

    def handle(name: str) -> None:
        if name in ("first", "fourth"):
            deliver("second" if name == "first" else "of the lost connection")
            raise ConnectionError("the connection broke")
        handled.append(name)

    deliver = worker.one_at_a_time(handle)
    with pytest.raises(ConnectionError):
        deliver("first")
    deliver("third")  # the worker goes on: the queued delivery is handled first
    assert handled == ["second", "third"]
    with pytest.raises(ConnectionError):
        deliver("fourth")
    worker._forget_unacked()  # the connection is gone: what it delivered comes back from the broker instead
    deliver("fifth")
    assert handled == ["second", "third", "fifth"]
