"""Signed messages with a real ``manage.py taskworker`` on a real Redis (issue 22, findings 1, 2 and 13).

The worker verifies with two keys (rotation); the test process sends with
either. Hostile messages go out through kombu's raw channel calls, as an
attacker with broker access would send them: tampered signed messages, a
stale replay, forged signatures aimed at an existing result, an oversized
body, too many headers. None runs or writes a result; each is one refusal
line and one unsigned dead letter; the worker goes on and still runs signed
work, including retries and a far-off task parked in the broker.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from django_tasks_q import AsyncResult
from django_tasks_q.broker.connection import new_connection
from django_tasks_q.broker.queues import get_queue
from django_tasks_q.core.message_signing import SIGNATURE_HEADER, sign_headers
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.results.backend import get_backend
from django_tasks_q.worker.deadletter import REFUSED_REASON, SIGNATURE_REMOVED
from testproject.videos.tasks import flaky, mark
from tests.workers import WorkerProcess

from .test_spine import wait_until

QUEUE = "signing"
DEAD = "signing.dead"
NEW, OLD = "n" * 48, "o" * 48
MAX_AGE = 600


@pytest.fixture(scope="module")
def signing_worker(redis_url, django_db_setup, django_db_blocker):
    env = {"TASKS_Q_SIGNING_KEY": json.dumps([NEW, OLD]), "TASKS_Q_SIGNING_MAX_AGE": str(MAX_AGE),
           "TASKS_Q_DEAD_LETTER_QUEUE": DEAD, "TASKS_Q_ETA_HOLD_MAX": "1",
           "TASKS_Q_MAX_MESSAGE_BYTES": "1000000", "TASKS_Q_MAX_HEADER_COUNT": "50"}
    with WorkerProcess(redis_url, "-Q", QUEUE, "-P", "threads", "-c", "2", "-n", "signing@%h", env=env) as w:
        yield w


@pytest.fixture
def signing(settings, redis_url, transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": redis_url, "SIGNING_KEY": OLD}
    return redis_url


def push(url: str, body: bytes, headers: dict, content_type: str = "application/json") -> None:
    with new_connection(url) as conn:
        channel = conn.channel()
        queue = get_queue(QUEUE)
        queue(channel).declare()
        message = channel.prepare_message(body, None, content_type, "utf-8", headers, {"delivery_mode": 2})
        channel.basic_publish(message, exchange=queue.exchange.name, routing_key=queue.routing_key)


def dead_letters(url: str) -> dict[str, object]:
    copies = {}
    with new_connection(url) as conn:
        channel = conn.channel()
        get_queue(DEAD)(channel).declare()
        while (raw := channel.basic_get(DEAD, no_ack=True)) is not None:
            copy = channel.message_to_python(raw)
            copies[copy.headers.get("id")] = copy
    return copies


def signed_mark(path, task_id: str, key: str = OLD, **fields) -> tuple[dict, bytes]:
    encoded = TaskMessage(id=task_id, task=mark.name, args=(str(path),), **fields).encode("json", key)
    return dict(encoded.headers), encoded.payload.encode()


def refusal(worker: WorkerProcess, task_id: str, reason: str) -> bool:
    return any("refused message" in line and f"[{task_id}]" in line and reason in line
               for line in worker.output().splitlines())


def test_signed_work_runs_with_either_key_including_retries_and_parked_tasks(signing_worker, signing, settings,
                                                                               tmp_path):
    assert mark.apply_async((str(tmp_path / "old-key"),), queue=QUEUE).get(timeout=15) == "ran"
    settings.TASKS_Q = {**settings.TASKS_Q, "SIGNING_KEY": [NEW, OLD]}  # rotated: the new key signs
    assert mark.apply_async((str(tmp_path / "new-key"),), queue=QUEUE).get(timeout=15) == "ran"
    # self.retry() re-sends from the worker, which signs the new message anew
    assert flaky.apply_async((3,), queue=QUEUE).get(timeout=20) == 2
    # a far-off eta (ETA_HOLD_MAX is 1 s) goes back to the broker, and still verifies when released
    parked = mark.apply_async((str(tmp_path / "parked"),), countdown=3, queue=QUEUE)
    assert parked.get(timeout=20) == "ran"
    assert f"[{parked.id}] is due at" in signing_worker.output()  # it was parked


def test_tampered_name_eta_and_group_are_refused(signing_worker, signing, tmp_path):
    cases = {"task": "testproject.videos.tasks.touch", "eta": "2030-01-01T00:00:00+00:00", "group": "other-group",
             "retries": 7}
    ids = {}
    for header, value in cases.items():
        task_id = f"tamper-{header}-{uuid.uuid4().hex[:6]}"
        headers, body = signed_mark(tmp_path / header, task_id)
        push(signing, body, {**headers, header: value})
        ids[task_id] = header
    wait_until(lambda: all(refusal(signing_worker, task_id, "bad signature") for task_id in ids), timeout=20)
    copies = dead_letters(signing)
    for task_id, header in ids.items():
        assert not (tmp_path / header).exists(), f"tampered {header} ran"
        assert get_backend().meta(task_id) is None or AsyncResult(task_id).state == TaskState.PENDING
        copy = copies[task_id]
        assert SIGNATURE_HEADER not in copy.headers and copy.headers[SIGNATURE_REMOVED] is True  # not replayable
        assert "bad signature" in copy.headers[REFUSED_REASON]


def test_a_replay_older_than_the_max_age_is_refused(signing_worker, signing, tmp_path):
    task_id = f"replay-{uuid.uuid4().hex[:6]}"
    headers, body = signed_mark(tmp_path / "replay", task_id)
    old = sign_headers(OLD, headers, body, "application/json", "utf-8", signed_at=int(time.time()) - MAX_AGE - 60)
    push(signing, body, old)
    wait_until(lambda: refusal(signing_worker, task_id, "possible replay"), timeout=20)
    assert not (tmp_path / "replay").exists()
    assert task_id in dead_letters(signing)


def test_forged_signatures_leave_an_existing_result_untouched(signing_worker, signing, tmp_path):
    ids = [f"victim-{n}-{uuid.uuid4().hex[:6]}" for n in range(2)]
    for task_id in ids:
        get_backend().mark(task_id, TaskState.SUCCESS, result=42, task_name=mark.name)
    body = json.dumps([[str(tmp_path / "forged")], {}, {}]).encode()
    push(signing, body, {"lang": "py", "task": "anything.at.all", "id": ids[0], SIGNATURE_HEADER: "é" * 64})
    push(signing, body, {"lang": "py", "task": "anything.at.all", "id": ids[1], SIGNATURE_HEADER: "0" * 64,
                         "compression": "application/x-nope"})
    wait_until(lambda: all(refusal(signing_worker, task_id, "") for task_id in ids), timeout=20)
    time.sleep(0.5)  # anything written would be written with the refusal
    for task_id in ids:
        result = AsyncResult(task_id)
        assert (result.state, result.result) == (TaskState.SUCCESS, 42)
        meta = get_backend().meta(task_id)
        assert "anything" not in str(getattr(meta, "task_name", ""))
    assert not (tmp_path / "forged").exists()


def test_an_oversized_body_and_too_many_headers_are_dead_lettered_and_the_worker_goes_on(signing_worker, signing,
                                                                                         tmp_path):
    big_id, many_id = f"big-{uuid.uuid4().hex[:6]}", f"many-{uuid.uuid4().hex[:6]}"
    headers, _ = signed_mark(tmp_path / "big", big_id)
    big_body = json.dumps([[str(tmp_path / "big"), "x" * 1_500_000], {}, {}]).encode()
    push(signing, big_body, headers)
    headers, body = signed_mark(tmp_path / "many", many_id)
    push(signing, body, {**headers, **{f"x-pad-{n}": n for n in range(200)}})
    wait_until(lambda: refusal(signing_worker, big_id, "over MAX_MESSAGE_BYTES")
               and refusal(signing_worker, many_id, "over MAX_HEADER_COUNT"), timeout=20)
    copies = dead_letters(signing)
    assert "MAX_MESSAGE_BYTES" in copies[big_id].headers[REFUSED_REASON]
    assert "MAX_HEADER_COUNT" in copies[many_id].headers[REFUSED_REASON]
    assert not (tmp_path / "big").exists() and not (tmp_path / "many").exists()
    assert mark.apply_async((str(tmp_path / "after"),), queue=QUEUE).get(timeout=15) == "ran"
    assert signing_worker.process.poll() is None
