"""Remote control inside the trust boundary, against real workers on Redis.

With ``SIGNING_KEY`` set a worker obeys only signed commands (``taskcontrol``,
``taskinspect``): an unsigned one -- what ``celery control`` and Flower send,
built here with kombu's own ``Mailbox`` as Celery's client builds it -- a
badly signed, a stale or a replayed one is refused, answered with the reason
and logged, and the worker keeps running. ``REMOTE_CONTROL = "read-only"``
answers inspect commands and refuses the others. ``pool_grow`` stops at
``MAX_CONCURRENCY``. ``active`` leaves task arguments out unless asked with
``safe=False``. ``inspect conf`` masks passwords.
"""

from __future__ import annotations

import json
import socket
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from kombu import Connection
from kombu.pidbox import Mailbox

from django_tasks_q.core.states import TaskState
from testproject.videos.tasks import sleep
from tests.workers import WorkerProcess

from .broker_tools import purge
from .test_spine import wait_until

HOST = socket.gethostname()
KEY = "a-control-signing-key-for-tests-0123456789abcdef"
SIGNED, READ_ONLY = f"signed@{HOST}", f"readonly@{HOST}"


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def celery_style(url: str, method: str, name: str, arguments: dict | None = None) -> list:
    """A command as ``celery control``/``celery inspect`` sends it: kombu's Mailbox, unsigned."""
    with Connection(url) as conn:
        return Mailbox("celery", type="fanout", accept=["json"])(conn)._broadcast(
            method, arguments or {}, destination=[name], reply=True, timeout=3, limit=1)


def publish_signed(url: str, key: bytes, method: str, name: str, at: float) -> list:
    """A command signed under ``key`` at time ``at`` (the reply is read as it comes)."""
    from django_tasks_q.worker import control_signing

    class Stamped(Mailbox):
        def _publish(self, type, arguments, destination=None, reply_ticket=None, **options):
            arguments = control_signing.sign_arguments(key, type, arguments, destination, ticket=reply_ticket,
                                                       reply_key=self.oid if reply_ticket else None, at=at)
            return super()._publish(type, arguments, destination=destination, reply_ticket=reply_ticket, **options)

    with Connection(url) as conn:
        return Stamped("celery", type="fanout", accept=["json"])(conn)._broadcast(
            method, {}, destination=[name], reply=True, timeout=3, limit=1)


@pytest.fixture
def signed_worker(redis_url, broker, transactional_db):
    broker(redis_url, SIGNING_KEY=KEY)
    purge(redis_url, "signed")
    with WorkerProcess(redis_url, "-Q", "signed", "-P", "threads", "-c", "1", "-n", SIGNED,
                       env={"TASKS_Q_SIGNING_KEY": KEY}) as worker:
        yield worker
        print(worker.output())  # shown when a test failed


def test_with_signing_on_only_signed_commands_are_obeyed(signed_worker, redis_url):
    worker = signed_worker
    # Celery's unsigned shutdown: refused with the reason, logged, and the worker keeps running
    [reply] = celery_style(redis_url, "shutdown", SIGNED)
    assert "refused control command 'shutdown': it is not signed" in reply[SIGNED]["error"]
    worker.wait_for("refused control command 'shutdown': it is not signed")
    assert worker.process.poll() is None
    # signed with another key, signed two minutes ago: refused too
    [reply] = publish_signed(redis_url, b"another-key-of-the-same-length-0123456789abcdef", "shutdown", SIGNED,
                             time.time())
    assert "does not match SIGNING_KEY" in reply[SIGNED]["error"]
    [reply] = publish_signed(redis_url, KEY.encode(), "shutdown", SIGNED, time.time() - 120)
    assert "signed 120s ago" in reply[SIGNED]["error"]
    assert [celery_style(redis_url, "ping", SIGNED)[0][SIGNED]["error"]]  # inspect commands need a signature too
    time.sleep(0.5)
    assert worker.process.poll() is None and "warm shutdown" not in worker.output()

    # our clients sign, and check the signature of every reply
    assert json.loads(run("taskinspect", "ping", "-d", SIGNED, "--json", "-t", "3")) == {SIGNED: {"ok": "pong"}}
    grow = run("taskcontrol", "pool_grow", "1", "-d", SIGNED, "-t", "5")
    assert f"-> {SIGNED}: OK" in grow
    # pool_grow past the cap (MAX_CONCURRENCY unset: 4 x the 1 slot it started with) is refused
    with pytest.raises(CommandError, match=f"not done by: {SIGNED}"):
        run("taskcontrol", "pool_grow", "3", "-d", SIGNED, "-t", "5")
    assert json.loads(run("taskinspect", "stats", "-d", SIGNED, "--json", "-t", "3"))[SIGNED]["pool"][
        "max-concurrency"] == 2

    # `active` leaves arguments out unless asked with safe=False (Celery's flag)
    running = sleep.apply_async((2.5,), queue="signed")
    wait_until(lambda: running.state == TaskState.STARTED, timeout=15)
    [task] = json.loads(run("taskinspect", "active", "-d", SIGNED, "--json", "-t", "3"))[SIGNED]
    assert task["id"] == running.id and task["args"] is None and task["kwargs"] is None
    [task] = json.loads(run("taskinspect", "active", "--safe=no", "-d", SIGNED, "--json", "-t", "3"))[SIGNED]
    assert task["args"] == [2.5] and task["kwargs"] == {}
    assert running.get(timeout=15) == 2.5

    assert "shutting down" in run("taskcontrol", "shutdown", "-d", SIGNED, "-t", "3")
    assert worker.process.wait(20) == 0 and "warm shutdown by remote control" in worker.output()


def test_a_reply_not_signed_with_our_key_is_not_taken(signed_worker, redis_url, settings):
    """A worker with another key (or none) cannot answer our signed clients."""
    settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": "the-client-has-another-key-0123456789abcdef"}
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match=f"unsigned or badly signed replies from: {SIGNED}"):
        call_command("taskinspect", "ping", "-d", SIGNED, "-t", "3", stdout=out, stderr=err)
    assert "reply not signed with SIGNING_KEY" in err.getvalue() and "pong" not in out.getvalue()
    signed_worker.wait_for("refused control command 'ping': its signature does not match SIGNING_KEY")


def test_inspect_conf_shows_no_password(redis_url, broker, transactional_db):
    broker(redis_url)
    backend = redis_url.replace("redis://", "redis://:resultpw@").rsplit("/", 1)[0] + "/1"
    name = f"conf@{HOST}"
    with WorkerProcess(redis_url, "-Q", "conf", "-P", "threads", "-c", "1", "-n", name,
                       env={"TASKS_Q_RESULT_BACKEND": backend}):
        conf = json.loads(run("taskinspect", "conf", "-d", name, "--json", "-t", "3"))[name]
        assert "resultpw" not in json.dumps(conf) and conf["result_backend"].startswith("redis://:**@")
        [reply] = celery_style(redis_url, "conf", name)  # what `celery inspect conf` and Flower get
        assert "resultpw" not in json.dumps(reply)


def test_read_only_remote_control_answers_inspect_and_refuses_control(redis_url, broker, transactional_db):
    broker(redis_url)
    purge(redis_url, "readonly")
    with WorkerProcess(redis_url, "-Q", "readonly", "-P", "threads", "-c", "1", "-n", READ_ONLY,
                       env={"TASKS_Q_REMOTE_CONTROL": "read-only"}) as worker:
        assert json.loads(run("taskinspect", "ping", "-d", READ_ONLY, "--json", "-t", "3")) == {
            READ_ONLY: {"ok": "pong"}}
        assert [celery_style(redis_url, "stats", READ_ONLY)[0][READ_ONLY]["pid"]] == [worker.process.pid]
        for args in (("shutdown",), ("pool_grow", "1"), ("add_consumer", "other")):
            with pytest.raises(CommandError, match=f"not done by: {READ_ONLY}"):
                run("taskcontrol", *args, "-d", READ_ONLY, "-t", "3")
        [reply] = celery_style(redis_url, "shutdown", READ_ONLY)
        assert "remote control is read-only" in reply[READ_ONLY]["error"]
        worker.wait_for("refused control command 'shutdown': remote control is read-only")
        time.sleep(0.5)
        assert worker.process.poll() is None and "warm shutdown" not in worker.output()
