"""``loops``: the one helper every background thread of a worker is written with."""

from __future__ import annotations

import logging
import threading
import time

from django_tasks_q.loops import Loop, spawn


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_tick_that_raises_is_one_outage_logged_twice_and_the_loop_goes_on(caplog):
    calls = []

    def tick():
        calls.append(threading.current_thread().name)
        if 2 <= len(calls) <= 4:
            raise ConnectionError("database went away")

    loop = Loop("probe", tick, 0.01, what="read the probe")
    with caplog.at_level(logging.INFO, logger="django_tasks_q.loops"):
        loop.start()
        try:
            wait_for(lambda: len(calls) >= 7)
            assert loop.alive and not loop.failing and loop.died is None
        finally:
            loop.stop()
    assert not loop.alive
    assert set(calls) == {"probe"}  # every tick in the loop's own named thread
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "probe could not read the probe (ConnectionError: database went away); retrying"]
    assert errors[0].exc_info is not None  # with its traceback
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == ["probe works again"]


def test_what_is_not_an_exception_ends_the_thread_and_is_kept_in_died(caplog):
    after = []

    def tick():
        raise SystemExit(3)

    loop = Loop("doomed", tick, 0.01, immediate=True, after=lambda: after.append(True))
    with caplog.at_level(logging.CRITICAL, logger="django_tasks_q.loops"):
        loop.start()
        loop.join(5)
    assert not loop.alive and isinstance(loop.died, SystemExit)
    assert after == [True]  # after() runs however the thread ends
    assert "doomed died (SystemExit: 3)" in caplog.text


def test_before_immediate_after_and_a_quiet_failure_while_stopping(caplog):
    order = []
    stopping = threading.Event()

    def tick():
        order.append("tick")
        if stopping.is_set():
            raise OSError("closed under us")

    loop = Loop("ordered", tick, 60.0, immediate=True, before=lambda: order.append("before"),
                after=lambda: order.append("after"))
    with caplog.at_level(logging.INFO, logger="django_tasks_q.loops"):
        loop.start()
        wait_for(lambda: "tick" in order)
        loop.stop()
    assert order == ["before", "tick", "after"]  # interval 60 s: stop() did not wait for it
    assert not caplog.records


def test_backoff_doubles_the_wait_after_repeated_failures_and_resets_on_success():
    stamps = []

    def tick():
        stamps.append(time.monotonic())
        if len(stamps) <= 4:
            raise OSError("refused")

    loop = Loop("backoff", tick, lambda: 0.1, immediate=True, backoff=0.4, traceback=False)
    loop.start()
    try:
        wait_for(lambda: len(stamps) >= 7)
    finally:
        loop.stop()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    # 0.1 after the first failure, then 0.2, 0.4, 0.4 (capped); 0.1 again after a success
    assert gaps[0] < 0.19 and 0.19 <= gaps[1] < 0.39 and 0.39 <= gaps[2] and 0.39 <= gaps[3]
    assert gaps[5] < 0.39


def test_stop_from_the_loops_own_thread_does_not_join_itself():
    holder: list[Loop] = []
    loop = Loop("self-stopping", lambda: holder[0].stop(), 0.01)
    holder.append(loop)
    loop.start()
    loop.join(5)
    assert not loop.alive and loop.died is None


def test_spawn_runs_once_and_logs_what_it_raises(caplog):
    def boom():
        raise ValueError("no depth")

    with caplog.at_level(logging.ERROR, logger="django_tasks_q.loops"):
        thread = spawn("one-off", boom)
        thread.join(5)
    assert thread.name == "one-off" and not thread.is_alive()
    assert "one-off failed" in caplog.text


def test_the_worker_stops_when_one_of_its_loops_died(caplog):
    from django_tasks_q.worker.worker import Worker

    worker = Worker(pool="threads", concurrency=1, hostname="w@host", heartbeat=0)
    names = [loop.name for loop in worker.background_loops()]
    assert names[0] == "revocations"
    dead = Loop("revocations", lambda: None, 1.0)
    dead.died = SystemExit(1)
    worker._loops = [dead]
    with caplog.at_level(logging.CRITICAL, logger="django_tasks_q.worker.worker"):
        worker._watch_loops()
    assert worker.stopping is True
    assert "background thread revocations died" in caplog.text
