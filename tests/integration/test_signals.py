"""Signals around real tasks on a real worker (prefork, Redis, embedded beat), and task logging.

The worker loads ``testproject.signal_log`` through ``TASKS_Q["IMPORTS"]``:
its receivers append one line per signal to a file, each after a receiver
that always raises -- which must do no harm to the worker or the tasks.
"""

from __future__ import annotations

import json
import uuid

import pytest

from django_tasks_q import AsyncResult, send_task, signals
from django_tasks_q.core.states import TaskState
from testproject.signal_log import logged
from testproject.videos.tasks import add, fail, flaky
from tests.workers import WorkerProcess

from .test_spine import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
IMPORTS = {"TASKS_Q_IMPORTS": json.dumps(["testproject.signal_log"])}


def read(path) -> list[tuple[str, str, int]]:
    """``(signal, detail, pid)`` per line the worker's receivers wrote."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        name, rest = line.split(" ", 1)
        detail, pid = rest.rsplit(" ", 1)
        lines.append((name, detail, int(pid)))
    return lines


def test_signals_fire_in_order_around_real_tasks(redis_url, broker, tmp_path):
    broker(redis_url)
    path = tmp_path / "signals.log"
    published: list[tuple[str, str]] = []

    def before(sender, headers, exchange, routing_key, **kwargs):
        published.append(("before", headers["id"]))

    def after(sender, headers, **kwargs):
        published.append(("after", headers["id"]))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    revoked_id = str(uuid.uuid4())
    AsyncResult(revoked_id).revoke()  # stored before the worker starts: it is refused on arrival
    schedule = {"tick": {"task": logged.name, "schedule": 1.0, "args": ["from beat"]}}
    env = {**IMPORTS, "TESTPROJECT_SIGNAL_LOG": str(path), "TASKS_Q_BEAT_SCHEDULE": json.dumps(schedule)}
    try:
        with WorkerProcess(redis_url, "-P", "prefork", "-c", "1", "-n", "signals@%h", "-B", env=env) as worker:
            done = logged.delay("first")
            assert done.get(timeout=20) == "first"
            failed = fail.delay("on purpose")
            with pytest.raises(ValueError):
                failed.get(timeout=20)
            retried = flaky.delay(2)  # fails once, retried, then succeeds
            assert retried.get(timeout=20) == 1  # the retry count of the attempt that succeeded
            unknown = send_task("testproject.no_such_task")
            revoked = add.apply_async((1, 1), task_id=revoked_id)
            wait_until(lambda: any(name == "task_unknown" for name, *_ in read(path)), timeout=20)
            wait_until(lambda: any(name == "task_revoked" for name, *_ in read(path)), timeout=20)
            wait_until(lambda: any(n == "beat_tick" and "tick" in d for n, d, _ in read(path)), timeout=20)
            worker_pid = worker.process.pid
            assert worker.stop() == 0  # warm shutdown: worker_shutting_down, worker_shutdown
            output = worker.output()
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)

    assert published[:2] == [("before", done.id), ("after", done.id)]
    assert ("before", revoked.id) in published and ("after", unknown.id) in published

    lines = read(path)
    names = [name for name, _, _ in lines]
    at = {name: names.index(name) for name in reversed(names)}  # first occurrence of each
    assert at["worker_init"] < at["worker_ready"] < at["task_received"]
    assert at["worker_init"] < at["worker_process_init"] < at["task_prerun"]  # the child starts on its own time
    assert [n for n in names if n.startswith("worker_")][-2:] == ["worker_shutting_down", "worker_shutdown"]
    assert ("worker_shutting_down", "SIGTERM warm", worker_pid) in lines
    child_pid = int(next(detail for name, detail, _ in lines if name == "worker_process_init"))
    assert child_pid != worker_pid

    def about(task_id: str, result: str = "") -> list[tuple[str, int]]:
        """The signals about one task (``task_success`` names its result, not its id)."""
        return [(name, pid) for name, detail, pid in lines
                if detail == task_id or (name == "task_success" and detail == result)]

    # the child consumes its tasks itself: task_received fires there too
    assert about(done.id, repr("first")) == [("task_received", child_pid), ("task_prerun", child_pid),
                              ("task_success", child_pid), ("task_postrun", child_pid)]
    assert [name for name, _ in about(failed.id)] == ["task_received", "task_prerun", "task_failure", "task_postrun"]
    retry_names = [name for name, detail, _ in lines if detail == retried.id]
    assert retry_names.count("task_retry") == 1 and retry_names.count("task_prerun") == 2
    assert ("task_unknown", "testproject.no_such_task") in [(n, d) for n, d, _ in lines]
    assert ("task_rejected", "testproject.no_such_task") in [(n, d) for n, d, _ in lines]
    assert ("task_revoked", revoked_id) in [(n, d) for n, d, _ in lines]
    assert "beat_init" in names and "task_prerun" not in [n for n, d, _ in lines if d == revoked_id]

    # the receiver that raises on every signal was logged each time and harmed nothing
    assert output.count("raised RuntimeError: a receiver that always fails") >= len(set(names))
    assert AsyncResult(revoked_id).state == TaskState.REVOKED


def test_task_logger_records_reach_the_logging_handler_with_task_ids(redis_url, broker, tmp_path):
    broker(redis_url)
    task_log = tmp_path / "tasks.log"
    with WorkerProcess(redis_url, "-P", "threads", "-c", "2", "-n", "logging@%h",
                       env={**IMPORTS, "TESTPROJECT_TASK_LOG": str(task_log)}) as worker:
        result = logged.delay("the video")
        assert result.get(timeout=20) == "the video"
        output = worker.output()
    # the handler from LOGGING, with its own format: level, task name, task id, message
    assert f"INFO {logged.name} {result.id} working on the video" in task_log.read_text().splitlines()
    # and the console handler's TaskFormatter puts the name and id in front of the message
    assert f"{logged.name}[{result.id}]: working on the video" in output
