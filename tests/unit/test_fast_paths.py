"""Each fast path against the readable path it stands in for: same bytes, or a refusal that sends the call
down the readable path.

* ``TaskMessage.sibling_encoder`` (a copy of a message with another id and arguments) against
  ``TaskMessage.encode`` of that message;
* ``calling._send_copy`` (a plain ``delay()`` copying the task's last one) against what ``send`` builds in
  full for the same id and arguments;
* ``fast_json`` / ``fast_loads`` against kombu's ``dumps`` / ``loads``.

``envelope_texts`` (a batch's kombu envelopes written from shared JSON) is checked against kombu's own
envelope in test_publisher.py.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from django_tasks_q.conf import settings
from django_tasks_q.core import calling
from django_tasks_q.core.options import NO_CALL_OPTIONS
from django_tasks_q.core.protocol import TaskMessage, fast_json, fast_loads
from testproject.videos.tasks import add, echo

#: (args, kwargs) that JSON carries as is: the fast paths must write what the readable path writes.
PLAIN_CALLS = [
    ((), {}),
    ((1, 2), {}),
    ((-(2**70), 2**63, 0.1, 1e300, -0.0), {}),
    (("quote \" backslash \\ tab \t newline \n",), {"é": "ünïcödé ✓ 𝄞"}),
    (([1, [2, [3, {"deep": [None, True, False]}]]],), {"list": [], "dict": {}}),
    (("x" * 5000,), {"long": "y" * 5000}),  # argsrepr / kwargsrepr are truncated
    ((None,), {"a": None, "b": {"c": [1.5, "d"]}}),
    (("\u2028\u2029\x00\x1f",), {}),
]
#: Arguments the fast paths must refuse (None), so that the call takes the readable path.
NEEDS_FULL_PATH = [
    ((datetime(2026, 1, 1, tzinfo=UTC),), {}),
    ((Decimal("1.10"),), {}),
    ((uuid.UUID(int=7),), {}),
    ((math.nan,), {}),
    ((), {"x": math.inf}),
]


def _message(args: tuple, kwargs: dict, **fields) -> TaskMessage:
    return TaskMessage(id=str(uuid.uuid4()), task="testproject.videos.tasks.add", args=args, kwargs=kwargs, **fields)


@pytest.mark.parametrize("args, kwargs", PLAIN_CALLS)
@pytest.mark.parametrize("fields", [{}, {"callbacks": [{"task": "t.cb", "args": [1]}], "retries": 2,
                                        "root_id": "root-1", "parent_id": "parent-1", "group_id": "g"}])
def test_a_sibling_is_what_encode_writes_for_that_message(args, kwargs, fields):
    first = _message((0,), {"z": 0}, **fields)
    sibling = first.sibling_encoder(first.encode())
    task_id = str(uuid.uuid4())
    copied = sibling(task_id, args, kwargs)
    full = replace(first, id=task_id, args=args, kwargs=kwargs,
                         root_id=fields.get("root_id") or task_id).encode()
    assert copied is not None
    assert copied.payload == full.payload
    assert copied.headers == full.headers
    assert (copied.content_type, copied.content_encoding) == (full.content_type, full.content_encoding)


@pytest.mark.parametrize("args, kwargs", NEEDS_FULL_PATH)
def test_a_sibling_refuses_what_only_the_full_path_can_write(args, kwargs):
    first = _message((0,), {})
    assert first.sibling_encoder(first.encode())(str(uuid.uuid4()), args, kwargs) is None


@pytest.fixture
def published(monkeypatch):
    """What ``send`` publishes, and whether it went through the copy (``like`` is the template)."""
    calls = []

    def capture(encoded, route, *, task_id, reply_to=None, deliver_at=None, like=None):
        calls.append((encoded, task_id, like is not None))

    monkeypatch.setattr("django_tasks_q.core.calling.publish", capture)
    monkeypatch.setattr(calling, "_templates", calling._Templates())  # no template left by another test
    return calls


def _full_path(task, task_id: str, args: tuple, kwargs: dict):
    message = calling._message(task.name, args, kwargs, NO_CALL_OPTIONS, task, calling.timezone.now())
    message = replace(message, id=task_id, root_id=task_id)
    return calling._encode(message, NO_CALL_OPTIONS, task, settings.as_dict()).encoded


@pytest.mark.parametrize("task", [add, echo], ids=["add", "echo"])
def test_a_copied_delay_is_what_the_full_path_sends(published, task):
    task.delay(0, 0) if task is add else task.delay("first")
    assert published[0][2] is False  # the first call is built in full and becomes the template
    for args, kwargs in PLAIN_CALLS:
        task.apply_async(args, kwargs)
    copies = published[1:]
    assert all(copied for _, _, copied in copies), "a plain call did not take the copy"
    for (encoded, task_id, _), (args, kwargs) in zip(copies, PLAIN_CALLS):
        full = _full_path(task, task_id, args, kwargs)
        assert encoded.payload == full.payload
        assert encoded.headers == full.headers


def test_a_copy_falls_back_to_the_full_path_for_arguments_json_cannot_carry(published):
    add.delay(0, 0)
    for args, kwargs in NEEDS_FULL_PATH[:3]:  # NaN and infinity are refused by the full path too
        add.apply_async(args, kwargs)
    assert [copied for _, _, copied in published] == [False, False, False, False]
    assert "__type__" in published[1][0].payload  # kombu's encoder wrote the datetime


def test_a_call_with_options_never_takes_the_copy(published):
    add.delay(0, 0)
    add.apply_async((1, 2), countdown=0)
    add.apply_async((1, 2), priority=3)
    assert [copied for _, _, copied in published] == [False, False, False]


VALUES = [None, True, 0, -1, 2**80, 0.5, 1e-300, "", "é\n\"\\", [], {}, [1, [2, {"a": [None]}]],
          {"k": "v", "n": 1.25, "nested": {"l": [True, False]}}, "\u2028", ["x" * 1000]]


@pytest.mark.parametrize("value", VALUES)
def test_fast_json_writes_kombus_text_and_fast_loads_reads_it_back(value):
    assert fast_json(value) == kombu_dumps(value)
    assert fast_loads(kombu_dumps(value)) == kombu_loads(kombu_dumps(value)) == value
    assert fast_loads(kombu_dumps(value).encode()) == value


@pytest.mark.parametrize("value", [datetime(2026, 1, 1, tzinfo=UTC), Decimal("2.5"), uuid.UUID(int=1),
                                   {"when": datetime(2026, 1, 1, tzinfo=UTC)}])
def test_types_only_kombu_knows_go_to_kombu_both_ways(value):
    assert fast_json(value) is None
    text = kombu_dumps(value)
    assert fast_loads(text) == kombu_loads(text)
    assert fast_json([1, 2]) == "[1, 2]"  # a refusal leaves the encoder usable


def test_a_circular_value_is_refused_in_json_dumps_words():
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        fast_json(loop)
    assert json.loads(fast_json({"after": 1})) == {"after": 1}
