"""Celery task protocol v2 messages: building, reading, encoding, signing."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from kombu.serialization import loads

from django_tasks_q.core.message_signing import SIGNATURE_HEADER, signed_data, verify
from django_tasks_q.core.protocol import TaskMessage, absolute_time
from django_tasks_q.core.signing import sign
from django_tasks_q.core.wire_values import parse_datetime
from django_tasks_q.exceptions import EncodeError, InvalidMessage

ETA = datetime(2030, 5, 17, 12, 30, 15, 250000, tzinfo=UTC)
EXPIRES = datetime(2030, 5, 17, 14, 0, tzinfo=timezone(timedelta(hours=2)))


def wire(message: TaskMessage, signing_key: str | None = None) -> tuple[dict, list, object]:
    """Encode as a publisher would, then decode as a consumer would (JSON both ways)."""
    encoded = message.encode("json", signing_key)
    headers = json.loads(json.dumps(encoded.headers))
    body = loads(encoded.payload, encoded.content_type, encoded.content_encoding)
    return headers, body, encoded


def full_message(**overrides) -> TaskMessage:
    values = dict(
        id="5f2c7b8e-0000-4000-8000-000000000001",
        task="testproject.videos.tasks.add",
        args=(2, 3),
        kwargs={"z": [1, "two"]},
        eta=ETA,
        expires=EXPIRES,
        retries=2,
        time_limit=60,
        soft_time_limit=50,
        parent_id="parent-1",
        group_id="group-1",
        group_index=4,
        ignore_result=True,
        callbacks=[{"task": "cb", "args": [], "kwargs": {}, "options": {}, "immutable": False}],
        errbacks=[{"task": "eb", "args": [], "kwargs": {}, "options": {}, "immutable": True}],
        chain=[{"task": "next", "args": [1], "kwargs": {}, "options": {}}],
        chord={"task": "chord-body", "args": [], "kwargs": {}, "options": {}},
        origin="gen1@host",
        extra_headers={"x-trace-id": "t-1", "stamps_custom": [1, 2]},
    )
    values.update(overrides)
    return TaskMessage(**values)


# -- round trip ------------------------------------------------------------

def test_round_trip_keeps_every_field():
    original = full_message()
    headers, body, _ = wire(original)
    again = TaskMessage.from_wire(headers, body)
    assert again.id == original.id
    assert again.task == original.task
    assert again.args == (2, 3)
    assert again.kwargs == {"z": [1, "two"]}
    assert again.eta == ETA and again.eta.tzinfo is not None
    assert again.expires == EXPIRES and again.expires.utcoffset() == timedelta(hours=2)
    assert again.retries == 2
    assert (again.time_limit, again.soft_time_limit) == (60, 50)
    assert again.parent_id == "parent-1"
    assert again.group_id == "group-1"
    assert again.group_index == 4
    assert again.ignore_result is True
    assert again.callbacks == original.callbacks
    assert again.errbacks == original.errbacks
    assert again.chain == original.chain
    assert again.chord == original.chord
    assert again.origin == "gen1@host"
    assert again.extra_headers == {"x-trace-id": "t-1", "stamps_custom": [1, 2]}
    assert again.root_id == original.id  # defaulted when written


def test_headers_layout():
    headers = full_message().headers()
    assert headers["lang"] == "py"
    assert headers["timelimit"] == [60, 50]  # [hard, soft]
    assert headers["eta"] == "2030-05-17T12:30:15.250000+00:00"
    assert headers["expires"] == "2030-05-17T14:00:00+02:00"
    assert headers["group"] == "group-1"
    assert headers["argsrepr"] == "(2, 3)"
    assert headers["kwargsrepr"] == "{'z': [1, 'two']}"
    assert headers["x-trace-id"] == "t-1"


def test_root_id_defaults_to_id_but_is_kept_when_given():
    assert TaskMessage(id="a", task="t").headers()["root_id"] == "a"
    assert TaskMessage(id="a", task="t", root_id="r").headers()["root_id"] == "r"


def test_extra_headers_cannot_override_protocol_headers():
    headers = TaskMessage(id="real", task="t", extra_headers={"id": "fake", "task": "evil"}).headers()
    assert (headers["id"], headers["task"]) == ("real", "t")


def test_body_is_args_kwargs_embed():
    body = TaskMessage(id="a", task="t", args=(1,), kwargs={"k": 2}).body()
    assert body == [[1], {"k": 2}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_defaults_read_back_as_none():
    headers, body, _ = wire(TaskMessage(id="a", task="t"))
    message = TaskMessage.from_wire(headers, body)
    assert (message.eta, message.expires, message.time_limit, message.soft_time_limit) == (None, None, None, None)
    assert (message.callbacks, message.chain, message.retries) == (None, None, 0)


def test_long_args_repr_is_bounded():
    headers = TaskMessage(id="a", task="t", args=("x" * 10_000,), kwargs={"k": list(range(1000))}).headers()
    assert len(headers["argsrepr"]) < 1000
    assert len(headers["kwargsrepr"]) < 1000


def test_message_is_immutable_and_replace_makes_a_copy():
    message = TaskMessage(id="a", task="t", retries=0)
    retried = replace(message, retries=1)
    assert (message.retries, retried.retries) == (0, 1)
    with pytest.raises(AttributeError):
        message.retries = 5


def test_naive_datetimes_on_the_wire_are_utc():
    headers, body, _ = wire(TaskMessage(id="a", task="t"))
    headers["eta"] = "2030-01-01T10:00:00"
    assert TaskMessage.from_wire(headers, body).eta == datetime(2030, 1, 1, 10, tzinfo=UTC)


def test_body_may_be_a_tuple_and_embed_may_be_null():
    message = TaskMessage.from_wire({"task": "t", "id": "i"}, ((1, 2), {}, None))
    assert message.args == (1, 2)
    assert message.callbacks is None


# -- bad messages ----------------------------------------------------------

GOOD_HEADERS = {"task": "testproject.videos.tasks.add", "id": "id-1"}
GOOD_BODY = [[1, 2], {}, {}]


@pytest.mark.parametrize("headers", [{}, None, {"task": "t"}, {"id": "i"}, {"task": "", "id": "i"}])
def test_missing_task_or_id_header(headers):
    with pytest.raises(InvalidMessage, match="headers 'task' and 'id' are required"):
        TaskMessage.from_wire(headers, GOOD_BODY)


@pytest.mark.parametrize("body", [[[1], {}], {"args": [1]}, "[[1], {}, {}]", None, [[1], {}, {}, {}]])
def test_body_must_be_a_three_item_list(body):
    with pytest.raises(InvalidMessage) as excinfo:
        TaskMessage.from_wire(GOOD_HEADERS, body)
    assert "body must be [args, kwargs, embed]" in str(excinfo.value)
    assert "testproject.videos.tasks.add [id-1]" in str(excinfo.value)


@pytest.mark.parametrize("body", [["1, 2", {}, {}], [{"x": 1}, {}, {}], [[1], [], {}], [[1], {}, [1]]])
def test_body_parts_must_have_the_right_types(body):
    with pytest.raises(InvalidMessage, match=r"body must be \[list, dict, dict\]"):
        TaskMessage.from_wire(GOOD_HEADERS, body)


@pytest.mark.parametrize("header", ["eta", "expires"])
@pytest.mark.parametrize("value", ["tomorrow", "2030-13-45T00:00:00", 12345])
def test_bad_datetime_header(header, value):
    with pytest.raises(InvalidMessage) as excinfo:
        TaskMessage.from_wire({**GOOD_HEADERS, header: value}, GOOD_BODY)
    assert f"header {header!r} is not an ISO 8601 datetime" in str(excinfo.value)
    assert repr(value) in str(excinfo.value)


@pytest.mark.parametrize("value", [60, "60", [60], [60, 50, 40]])
def test_bad_timelimit_header(value):
    with pytest.raises(InvalidMessage, match=r"header 'timelimit' must be \[hard, soft\]"):
        TaskMessage.from_wire({**GOOD_HEADERS, "timelimit": value}, GOOD_BODY)


@pytest.mark.parametrize("value", [["60", None], [None, "soft"], [True, None], [[1], None]])
def test_timelimit_values_must_be_numbers(value):
    with pytest.raises(InvalidMessage, match="header 'timelimit' must hold numbers or null"):
        TaskMessage.from_wire({**GOOD_HEADERS, "timelimit": value}, GOOD_BODY)


@pytest.mark.parametrize("value", ["abc", "1", [1], 1.5, True])
def test_retries_must_be_an_integer(value):
    # A plain ValueError/TypeError here would escape the consumer's refusal path.
    with pytest.raises(InvalidMessage, match="header 'retries' must be an integer"):
        TaskMessage.from_wire({**GOOD_HEADERS, "retries": value}, GOOD_BODY)


def test_invalid_message_is_a_value_error():
    with pytest.raises(ValueError):
        TaskMessage.from_wire({}, GOOD_BODY)


# -- encoding --------------------------------------------------------------

@pytest.mark.parametrize(("args", "kwargs"), [
    ((object(),), {}),
    ((), {"when": {1, 2}}),
    ((1, {"nested": object()}), {}),
])
def test_unserialisable_arguments_raise_encode_error_naming_the_task(args, kwargs):
    message = TaskMessage(id="id-9", task="testproject.videos.tasks.echo", args=args, kwargs=kwargs)
    with pytest.raises(EncodeError) as excinfo:
        message.encode("json")
    text = str(excinfo.value)
    assert "'testproject.videos.tasks.echo'" in text
    assert "id-9" in text
    assert "nothing was sent" in text


def test_encode_error_is_a_type_error():
    with pytest.raises(TypeError):
        TaskMessage(id="a", task="t", args=(object(),)).encode()


def test_encode_produces_json():
    encoded = TaskMessage(id="a", task="t", args=(1,)).encode("json")
    assert encoded.content_type == "application/json"
    assert encoded.content_encoding == "utf-8"
    assert json.loads(encoded.payload)[0] == [1]
    assert SIGNATURE_HEADER not in encoded.headers


# -- signing ---------------------------------------------------------------

def test_signed_message_verifies():
    headers, _, encoded = wire(TaskMessage(id="a", task="t", args=(1,)), signing_key="k3y")
    assert headers[SIGNATURE_HEADER] == sign(b"k3y", signed_data(headers, encoded.payload, "application/json", "utf-8"))
    verify("k3y", headers, encoded.payload)  # does not raise (after a JSON round trip of the headers)


def test_unsigned_message_is_refused():
    _, _, encoded = wire(TaskMessage(id="a", task="t"))
    with pytest.raises(InvalidMessage, match="unsigned message refused"):
        verify("k3y", encoded.headers, encoded.payload)


def test_tampered_body_is_refused():
    _, _, encoded = wire(TaskMessage(id="a", task="t", args=(1,)), signing_key="k3y")
    tampered = encoded.payload.replace("[1]", "[2]") if isinstance(encoded.payload, str) else \
        encoded.payload.replace(b"[1]", b"[2]")
    assert tampered != encoded.payload
    with pytest.raises(InvalidMessage, match="bad signature"):
        verify("k3y", encoded.headers, tampered)


def test_signature_is_bound_to_the_task_id_and_key():
    _, _, encoded = wire(TaskMessage(id="a", task="t"), signing_key="k3y")
    with pytest.raises(InvalidMessage, match="bad signature"):
        verify("k3y", {**encoded.headers, "id": "b"}, encoded.payload)
    with pytest.raises(InvalidMessage, match="bad signature"):
        verify("other-key", encoded.headers, encoded.payload)


def test_signature_header_is_not_an_extra_header():
    headers, body, _ = wire(TaskMessage(id="a", task="t"), signing_key="k3y")
    assert SIGNATURE_HEADER not in TaskMessage.from_wire(headers, body).extra_headers


# -- helpers ---------------------------------------------------------------

def test_absolute_time():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert absolute_time(None, now) is None
    assert absolute_time(90, now) == datetime(2030, 1, 1, 0, 1, 30, tzinfo=UTC)
    assert absolute_time(datetime(2031, 1, 1), now) == datetime(2031, 1, 1, tzinfo=UTC)
    assert absolute_time(EXPIRES, now) is EXPIRES


def test_parse_datetime_empty_is_none():
    assert parse_datetime(None, "eta") is None
    assert parse_datetime("", "eta") is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused_before_sending(value):
    with pytest.raises(EncodeError, match="JSON cannot carry"):
        TaskMessage(id="nan-1", task="videos.tasks.add", args=(value, 1)).encode("json")
    # the words alone, inside strings, are fine
    TaskMessage(id="nan-2", task="videos.tasks.add", args=("NaN", "Infinity")).encode("json")
