"""Signed task messages (issue 22, findings 1, 2 and 13): what the signature covers, its age, rotation,
forgeries that must write nothing, dead letters that are not replayable, and the intake size limits."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from kombu import Connection, Consumer

from django_tasks_q import signals
from django_tasks_q.broker.queues import get_queue
from django_tasks_q.core.message_signing import (
    SIGNATURE_HEADER,
    SIGNED_AT_HEADER,
    legacy_signature,
    sign_headers,
    verify,
)
from django_tasks_q.core.protocol import TaskMessage
from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import InvalidSignature
from django_tasks_q.results.backend import get_backend
from django_tasks_q.worker import deadletter, intake

KEY = "k" * 40
ADD = "testproject.videos.tasks.add"


def signed(key=KEY, **fields):
    message = TaskMessage(**{"id": "s-1", "task": ADD, "args": (1, 2), **fields})
    encoded = message.encode("json", key)
    return json.loads(json.dumps(encoded.headers)), encoded.payload  # as a JSON broker hands them back


# -- what is signed ----------------------------------------------------------

def test_a_signed_message_verifies_after_a_json_round_trip():
    headers, payload = signed(eta=datetime(2030, 1, 1, tzinfo=UTC), time_limit=60, soft_time_limit=50.5,
                              group_id="g", parent_id="p", root_id="r", retries=2, group_index=1)
    verify(KEY, headers, payload, "application/json", "utf-8", max_age=60)
    assert isinstance(headers[SIGNED_AT_HEADER], int) and abs(headers[SIGNED_AT_HEADER] - time.time()) < 5


@pytest.mark.parametrize(("header", "value"), [
    ("task", "testproject.videos.tasks.noop"),  # finding 1: mark(path) accepted as touch(path)
    ("eta", "2030-01-01T00:00:00+00:00"),
    ("group", "another-group"),
    ("retries", 7),
    ("expires", "2031-01-01T00:00:00+00:00"),
    ("timelimit", [1, None]),
    ("root_id", "other-root"),
    ("parent_id", "other-parent"),
    ("group_index", 3),
    ("ignore_result", True),
    ("id", "s-2"),
    (SIGNED_AT_HEADER, -60),  # moved a minute back from when it was signed
], ids=lambda value: value if isinstance(value, str) else "")
def test_every_header_that_decides_what_runs_is_signed(header, value):
    headers, payload = signed()
    if header == SIGNED_AT_HEADER:  # relative to the signing, never equal to it (a fixed time could be)
        value = headers[SIGNED_AT_HEADER] + value
    with pytest.raises(InvalidSignature, match="bad signature"):
        verify(KEY, {**headers, header: value}, payload)


def test_content_type_and_encoding_are_signed():
    headers, payload = signed()
    with pytest.raises(InvalidSignature, match="bad signature"):
        verify(KEY, headers, payload, "application/x-msgpack", "utf-8")
    with pytest.raises(InvalidSignature, match="bad signature"):
        verify(KEY, headers, payload, "application/json", "latin-1")


def test_the_embed_is_signed():
    headers, payload = signed(callbacks=[{"task": ADD, "args": [1], "kwargs": {}, "options": {}}])
    with pytest.raises(InvalidSignature):
        verify(KEY, headers, payload.replace(ADD, "testproject.videos.tasks.fail"))


@pytest.mark.parametrize("given", ["é" * 64, "ä" + "0" * 63, 12345, ["0" * 64], b"0" * 64, "0" * 63, "0" * 65,
                                   {"sig": 1}, True])
def test_a_malformed_signature_is_invalid_never_an_error(given):
    """Finding 2: a non-ASCII signature made hmac.compare_digest raise TypeError."""
    headers, payload = signed()
    with pytest.raises(InvalidSignature):
        verify(KEY, {**headers, SIGNATURE_HEADER: given}, payload)


@pytest.mark.parametrize(("header", "value"), [
    ("id", 5), ("task", ["x"]), ("eta", 3), ("retries", "7"), ("timelimit", "60"), ("timelimit", [1, 2, 3]),
    (SIGNED_AT_HEADER, "yesterday"), (SIGNED_AT_HEADER, None),
])
def test_a_signed_header_of_the_wrong_type_is_invalid(header, value):
    headers, payload = signed()
    with pytest.raises(InvalidSignature):
        verify(KEY, {**headers, header: value}, payload)


# -- age ---------------------------------------------------------------------

def test_a_replay_older_than_the_max_age_is_refused():
    headers, payload = signed()
    now = headers[SIGNED_AT_HEADER]
    verify(KEY, headers, payload, max_age=3600, now=now + 3599)
    with pytest.raises(InvalidSignature, match="SIGNING_MAX_AGE"):
        verify(KEY, headers, payload, max_age=3600, now=now + 3601)
    verify(KEY, headers, payload, max_age=None, now=now + 10 * 365 * 86400)  # None: no limit


def test_age_counts_from_the_eta_for_a_task_due_later():
    eta = datetime.now(UTC) + timedelta(days=30)
    headers, payload = signed(eta=eta)
    due = eta.timestamp()
    verify(KEY, headers, payload, max_age=3600, now=due + 3599)  # parked 30 days, runs when due
    with pytest.raises(InvalidSignature, match="possible replay"):
        verify(KEY, headers, payload, max_age=3600, now=due + 3601)


def test_a_message_signed_far_in_the_future_is_refused():
    headers, payload = signed()
    with pytest.raises(InvalidSignature, match="in the future"):
        verify(KEY, headers, payload, max_age=60, now=headers[SIGNED_AT_HEADER] - 120)


# -- keys --------------------------------------------------------------------

def test_key_rotation_the_first_signs_any_verifies():
    old, new = "o" * 40, "n" * 40
    headers, payload = signed(key=old)
    verify((new, old), headers, payload)
    with pytest.raises(InvalidSignature):
        verify((new,), headers, payload)
    headers, payload = signed(key=new)
    verify((new, old), headers, payload)


def test_the_old_format_is_refused_unless_accepted_explicitly():
    message = TaskMessage(id="s-1", task=ADD, args=(1, 2))
    encoded = message.encode("json")
    headers = {**encoded.headers, SIGNATURE_HEADER: legacy_signature(KEY, "s-1", encoded.payload)}
    with pytest.raises(InvalidSignature):
        verify(KEY, headers, encoded.payload)
    verify(KEY, headers, encoded.payload, accept_legacy=True)
    with pytest.raises(InvalidSignature):
        verify(KEY, {**headers, "id": "s-2"}, encoded.payload, accept_legacy=True)


def test_re_signing_gives_a_new_time_and_signature():
    headers, payload = signed()
    again = sign_headers(KEY, {**headers, "retries": 1}, payload, "application/json", "utf-8",
                         signed_at=headers[SIGNED_AT_HEADER] + 10)
    verify(KEY, again, payload)
    assert again[SIGNATURE_HEADER] != headers[SIGNATURE_HEADER]


# -- intake: refusals that write nothing -------------------------------------

@pytest.fixture
def channel():
    with Connection("memory://") as conn:
        channel = conn.channel()
        for name in ("inbox", "tasksq.dead"):
            queue = get_queue(name)(channel)
            queue.declare()
            queue.purge()
        yield channel


@pytest.fixture
def rejected_signals():
    seen = []

    def receiver(sender, **kwargs):
        seen.append(kwargs)

    signals.task_rejected.connect(receiver, weak=False)
    signals.task_unknown.connect(receiver, weak=False)
    yield seen
    signals.task_rejected.disconnect(receiver)
    signals.task_unknown.disconnect(receiver)


def put(channel, body: bytes, headers, content_type="application/json"):
    inbox = get_queue("inbox")
    message = channel.prepare_message(body, None, content_type, "utf-8", headers, {})
    channel.basic_publish(message, exchange=inbox.exchange.name, routing_key=inbox.routing_key)


SIGNING = intake.Policy(signing_keys=(KEY,), acks_late=False, dead_letter_queue="tasksq.dead")


def success_row(task_id: str) -> None:
    get_backend().mark(task_id, TaskState.SUCCESS, result=42, task_name=ADD)


def assert_untouched(task_id: str) -> None:
    meta = get_backend().meta(task_id)
    assert meta.state == TaskState.SUCCESS and meta.result == 42


@pytest.mark.django_db
def test_a_non_ascii_signature_leaves_an_existing_result_untouched(channel, rejected_signals, caplog):
    success_row("victim-1")
    body = json.dumps([[], {}, {}]).encode()
    put(channel, body, {"task": "anything.at.all", "id": "victim-1", SIGNATURE_HEADER: "é" * 64})
    message = channel.basic_get("inbox")
    with caplog.at_level(logging.ERROR):
        assert intake.read(message, "inbox", SIGNING) is None
    assert_untouched("victim-1")
    assert rejected_signals == []
    assert "refused message anything.at.all[victim-1]" in caplog.text and "before its signature" in caplog.text
    copy = channel.basic_get("tasksq.dead", no_ack=True)
    assert copy is not None and SIGNATURE_HEADER not in copy.headers
    assert copy.headers[deadletter.SIGNATURE_REMOVED] is True


@pytest.mark.django_db
def test_bad_compression_leaves_an_existing_result_untouched(channel, rejected_signals, caplog):
    """Finding 2: kombu calls on_decode_error before any signature check."""
    success_row("victim-2")
    headers, payload = signed(id="victim-2")
    put(channel, payload.encode(), {**headers, "task": "anything.at.all", "compression": "application/x-nope"})
    seen = []
    consumer = Consumer(channel, [get_queue("inbox")], on_message=seen.append, accept=["json"],
                        on_decode_error=partial(intake.undecodable, "inbox", SIGNING))
    with caplog.at_level(logging.ERROR), consumer:
        channel.connection.client.drain_events(timeout=1)
    assert seen == []
    assert_untouched("victim-2")
    assert rejected_signals == []
    assert "refused message anything.at.all[victim-2]" in caplog.text
    assert channel.basic_get("inbox") is None
    copy = channel.basic_get("tasksq.dead", no_ack=True)
    assert copy is not None and SIGNATURE_HEADER not in copy.headers


@pytest.mark.django_db
def test_a_stale_replay_leaves_an_existing_result_untouched(channel):
    success_row("victim-3")
    headers, payload = signed(id="victim-3", task="testproject.videos.tasks.nowhere")
    headers = sign_headers(KEY, headers, payload, "application/json", "utf-8", signed_at=int(time.time()) - 7200)
    put(channel, payload.encode(), headers)
    policy = intake.Policy((KEY,), False, "tasksq.dead", signing_max_age=3600)
    assert intake.read(channel.basic_get("inbox"), "inbox", policy) is None
    assert_untouched("victim-3")


@pytest.mark.django_db
def test_a_verified_message_refused_later_is_still_recorded(channel, rejected_signals):
    headers, payload = signed(id="known-1", task="nowhere.tasks.ghost")
    put(channel, payload.encode(), headers)
    assert intake.read(channel.basic_get("inbox"), "inbox", SIGNING) is None
    assert get_backend().meta("known-1").state == TaskState.FAILURE  # signed: the caller hears why
    assert len(rejected_signals) == 2  # task_unknown and task_rejected


# -- intake: limits ----------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize(("body", "extra", "reason"), [
    (json.dumps([["x" * 2000], {}, {}]).encode(), {}, "over MAX_MESSAGE_BYTES (1000)"),
    (json.dumps([[1, 2], {}, {}]).encode(), {f"x-{n}": n for n in range(20)}, "over MAX_HEADER_COUNT (10)"),
])
def test_an_oversized_message_is_refused_to_the_dead_letter_queue(channel, caplog, body, extra, reason):
    put(channel, body, {"task": ADD, "id": "big-1", **extra})
    policy = intake.Policy((), False, "tasksq.dead", max_message_bytes=1000, max_header_count=10)
    with caplog.at_level(logging.ERROR):
        assert intake.read(channel.basic_get("inbox"), "inbox", policy) is None
    assert reason in caplog.text and "big-1" in caplog.text
    copy = channel.basic_get("tasksq.dead", no_ack=True)
    assert copy is not None and reason in copy.headers[deadletter.REFUSED_REASON]
    put(channel, json.dumps([[1, 2], {}, {}]).encode(), {"task": ADD, "id": "small-1"})
    assert intake.read(channel.basic_get("inbox"), "inbox", policy) is not None  # and the next one is read


def test_the_limits_default_from_the_settings(settings):
    policy = intake.Policy.from_settings()
    assert (policy.max_message_bytes, policy.max_header_count) == (32 * 1024 * 1024, 1000)
    assert policy.signing_max_age == 7 * 86400 and policy.signing_accept_legacy is False
