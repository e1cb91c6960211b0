"""The page a prefork child shares with its parent, and the Lamport clock they share.

Real shared memory between real processes: the child side runs in a forked
process, as a prefork child does, and the parent reads what it wrote.
"""

from __future__ import annotations

import multiprocessing
import os
import time

from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.worker.child_slot import OFF_LOOP, SIZE, SharedClock, Slot

_fork = multiprocessing.get_context("fork")


def _in_child(path: str, steps: list[str]) -> None:
    slot = Slot.attach(path)
    message = TaskMessage(id="t-1", task="videos.encode", args=(1, "two"), kwargs={"k": [3]}, time_limit=9.0)
    for step in steps:
        if step == "start":
            slot.started(message, {"queue": "videos", "redelivered": True}, True, 1234.5, time.monotonic() + 9)
        elif step == "big":
            huge = TaskMessage(id="t-2", task="videos.encode", args=("x" * SIZE,))
            slot.started(huge, {}, False, 1.0, None)
        elif step == "finish":
            slot.finished(7, 2)
        elif step == "error":
            slot.broker_error("ConnectionError: refused")
    slot.stamp(OFF_LOOP)


def _run_child(slot: Slot, *steps: str) -> None:
    child = _fork.Process(target=_in_child, args=(slot.path, list(steps)))
    child.start()
    child.join(10)
    assert child.exitcode == 0


def test_the_parent_reads_what_the_child_runs_with_its_message():
    slot = Slot.create()
    try:
        assert slot.running() is None  # a new child runs nothing
        _run_child(slot, "start")
        assert not os.path.exists(slot.path)  # the child unlinked the name; both mappings keep the page
        running = slot.running()
        assert running is not None
        assert (running.task_id, running.task_name, running.acks_late, running.started) == \
            ("t-1", "videos.encode", True, 1234.5)
        assert running.deadline is not None and running.deadline > time.monotonic() + 8
        assert running.message.args == (1, "two") and running.message.kwargs == {"k": [3]}
        assert running.message.time_limit == 9.0
        assert running.delivery_info == {"queue": "videos", "redelivered": True}
        assert slot.running(with_message=False).message is None  # the cheap look the supervise loop takes
        seq = slot.seq()
        assert seq % 2 == 0 and seq > 0  # even: not mid-write
    finally:
        slot.close()


def test_a_finished_task_clears_the_entry_and_counts_and_errors_are_read():
    slot = Slot.create()
    try:
        _run_child(slot, "start", "finish", "error")
        assert slot.running() is None
        assert slot.counts() == (7, 2)
        loop_at, _received, progress = slot.stamps()
        assert 0 < progress <= loop_at <= time.monotonic()
        since, text = slot.broker_error_since()
        assert since is not None and text == "ConnectionError: refused"
    finally:
        slot.close()


def test_a_message_too_large_to_keep_leaves_its_id_and_name():
    slot = Slot.create()
    try:
        _run_child(slot, "big")
        running = slot.running()
        assert running.task_id == "t-2" and running.task_name == "videos.encode"
        assert running.message is None and running.deadline is None
    finally:
        slot.close()


def _tick(clock: SharedClock, times: int, out) -> None:
    out.put([clock.forward() for _ in range(times)])


def test_one_lamport_clock_across_processes():
    parent = SharedClock(_fork)
    out = _fork.Queue()
    workers = [_fork.Process(target=_tick, args=(parent.for_child(n), 200, out)) for n in range(3)]
    for worker in workers:
        worker.start()
    runs = [out.get(timeout=10) for _ in workers]
    for worker in workers:
        worker.join(10)
    for run in runs:
        assert run == sorted(run) and len(set(run)) == len(run)  # each process counts up
    seen = [value for run in runs for value in run]
    assert len(set(seen)) == len(seen) == 600  # and no two processes give the same value
    assert parent.value >= max(seen) >> 8 << 8  # the highest published value reached the parent
    after = parent.forward()
    assert after > max(seen) - 256 and after & 0xFF == 0  # the parent's own index, past what it saw
    assert parent.adjust(after + 10_000) > after + 10_000
