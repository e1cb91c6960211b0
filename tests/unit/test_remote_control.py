"""Remote-control handlers against a real (not started) worker: Celery's reply shapes and their effects."""

from __future__ import annotations

import heapq
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from celery.worker.request import Request

from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.models import Revocation, TaskResult
from django_tasks_q.worker.pools.base import Job
from django_tasks_q.worker.remote_control import HANDLERS, RemoteControl, mailbox
from django_tasks_q.worker.worker import Worker
from testproject.videos.tasks import add, limited

#: the keys of Celery's Request.info(), read from Celery itself
CELERY_INFO_KEYS = set(Request.info(SimpleNamespace(
    id=1, name=1, _args=1, _kwargs=1, _argsrepr=1, _kwargsrepr=1, _type=1, _hostname=1, time_start=1,
    acknowledged=1, delivery_info=1, worker_pid=1)))


@pytest.fixture
def control(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "amqp://guest:secret@127.0.0.1:5999//"}
    worker = Worker(pool="threads", concurrency=2, hostname="w@host", heartbeat=0)
    return RemoteControl(worker)


def job(task_id: str, name: str = add.name, **fields) -> Job:
    message = TaskMessage(id=task_id, task=name, args=(1, 2), kwargs={"k": "v"}, **fields)
    return Job(message=message, delivery_info={"exchange": "", "routing_key": "default", "queue": "default",
                                               "priority": 3, "redelivered": False}, acks_late=False)


def call(control: RemoteControl, command: str, **arguments):
    return HANDLERS[command](control, **arguments)


def test_request_info_has_celerys_keys_and_lists_follow_the_worker(control):
    running, waiting, later = job("run-1"), job("wait-1"), job("later-1", eta=datetime.now(timezone.utc)
                                                               + timedelta(seconds=20))
    control.worker.active["run-1"] = (running, 1700000000.5)
    control.worker.ready.append(waiting)
    heapq.heappush(control.worker.held, (later.message.eta.timestamp(), 0, later))

    [hidden] = call(control, "active")  # arguments may hold secrets: only given when asked with safe=False
    assert set(hidden) == CELERY_INFO_KEYS and hidden["args"] is None and hidden["kwargs"] is None
    assert call(control, "reserved")[0]["args"] is None and call(control, "scheduled")[0]["request"]["args"] is None
    [active] = call(control, "active", safe=False)
    assert set(active) == CELERY_INFO_KEYS
    assert (active["id"], active["name"], active["type"], active["args"], active["kwargs"]) == (
        "run-1", add.name, add.name, [1, 2], {"k": "v"})
    assert active["time_start"] == 1700000000.5 and active["hostname"] == "w@host"
    assert active["delivery_info"]["routing_key"] == "default" and active["delivery_info"]["priority"] == 3
    assert call(control, "active", safe=True)[0]["args"] == "(1, 2)"
    assert [r["id"] for r in call(control, "reserved")] == ["wait-1"]
    [scheduled] = call(control, "scheduled")
    assert scheduled["eta"] == later.message.eta.isoformat() and scheduled["priority"] == 3
    assert scheduled["request"]["id"] == "later-1"
    assert call(control, "dump_active") == call(control, "active")  # Celery's aliases answer too


def test_ping_stats_conf_and_unknown_commands(control):
    assert call(control, "ping") == {"ok": "pong"}
    control.worker.totals[add.name] += 3
    stats = call(control, "stats")
    assert stats["total"] == {add.name: 3} and stats["pool"]["max-concurrency"] == 2
    assert stats["broker"]["port"] == 5999 and "password" not in stats["broker"]
    conf = call(control, "conf")
    assert "secret" not in str(conf) and conf["broker_url"] == "amqp://guest:**@127.0.0.1:5999//"
    assert "unknown command 'objgraph'" in call(control, "objgraph")["error"]
    assert "limited [rate_limit=5/s]" in " ".join(call(control, "registered"))


def test_rate_limit_changes_this_workers_interval(control):
    limiter = control.worker.rate_limits
    assert call(control, "rate_limit", task_name=add.name, rate_limit="4/s") == {
        "ok": "new rate limit set successfully"}
    assert limiter.interval(add.name) == 0.25
    assert call(control, "rate_limit", task_name=add.name, rate_limit="10")["ok"]  # a bare number is per second
    assert limiter.interval(add.name) == 0.1
    assert call(control, "rate_limit", task_name=limited.name, rate_limit="0") == {
        "ok": "rate limit disabled successfully"}
    assert limiter.interval(limited.name) is None
    assert call(control, "rate_limit", task_name="nope", rate_limit="1/s") == {"error": "unknown task"}
    assert "Invalid rate limit string" in call(control, "rate_limit", task_name=add.name, rate_limit="often")["error"]


def test_revoke_stores_the_same_revoke_as_taskcontrol(control):
    reply = call(control, "revoke", task_id=["r-1", "r-2"])
    assert reply == {"ok": "tasks r-1, r-2 flagged as revoked"}
    assert set(Revocation.objects.values_list("task_id", flat=True)) == {"r-1", "r-2"}
    assert TaskResult.objects.get(task_id="r-1").state == TaskState.REVOKED
    # terminate of a task not running here: stored, nothing to stop
    assert call(control, "revoke", task_id="r-3", terminate=True, signal="KILL") == {"ok": "terminate: tasks unknown"}
    assert Revocation.objects.get(task_id="r-3").signal == "SIGKILL"
    assert "unknown signal" in call(control, "revoke", task_id="r-4", terminate=True, signal="SIGNOPE")["error"]


def test_shutdown_and_events_switches(control):
    assert call(control, "shutdown") == {"ok": "shutting down"}
    assert control.worker.stopping is True
    assert call(control, "disable_events") == {"ok": "task events already disabled"}
    assert call(control, "enable_events") == {"ok": "task events enabled"}  # amqp: supported
    assert control.events.enabled and call(control, "conf")["worker_send_task_events"] is True
    assert call(control, "disable_events") == {"ok": "task events disabled"}
    control.events.stop(timeout=1)


def test_the_node_answers_only_its_own_destination(control):
    node = mailbox().Node("w@host", state=control, handlers=HANDLERS)
    assert node.handle_message({"method": "ping", "destination": ["other@host"]}) is None
    assert node.handle_message({"method": "ping", "destination": ["w@host"]}) == {"ok": "pong"}
    assert node.handle_message({"method": "ping", "pattern": "w@*", "matcher": "glob"}) == {"ok": "pong"}


def test_an_expired_command_is_ignored(control):
    class Message:
        headers = {"expires": time.time() - 1, "clock": 0}

    control.node = mailbox().Node("w@host", state=control, handlers=HANDLERS)
    control._on_message({"method": "shutdown", "arguments": {}}, Message())
    assert control.worker.stopping is False


def test_a_pattern_destination_is_matched_as_kombus_node_does(control):
    """``_for_me`` decides before any handler runs (signing, read-only): a glob or regex destination must
    select this worker as kombu's ``Node.handle_message`` would (it raised ImportError once)."""
    assert control._for_me({"method": "ping", "pattern": "w@*", "matcher": "glob"})
    assert control._for_me({"method": "ping", "pattern": r"w@h.st", "matcher": "pcre"})
    assert not control._for_me({"method": "ping", "pattern": "other@*", "matcher": "glob"})
    assert control._for_me({"method": "ping", "destination": ["w@host"]})
    assert not control._for_me({"method": "ping", "destination": ["other@host"]})
