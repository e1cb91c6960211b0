"""``TaskMessage.from_wire`` refuses hostile headers and bodies with a reason (docs/reliability.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from django_tasks_q.core.protocol import MAX_ETA_AHEAD, TaskMessage, usable_id
from django_tasks_q.exceptions import InvalidMessage

HEADERS = {"task": "testproject.videos.tasks.add", "id": "id-1"}
BODY = [[1, 2], {}, {}]


def test_an_eta_more_than_ten_years_ahead_is_refused_and_one_within_is_kept():
    near = datetime.now(UTC) + MAX_ETA_AHEAD - timedelta(days=1)
    assert TaskMessage.from_wire({**HEADERS, "eta": near.isoformat()}, BODY).eta == near
    with pytest.raises(InvalidMessage, match="'eta' 9999-12-31T00:00:00\\+00:00 is more than 3650 days ahead"):
        TaskMessage.from_wire({**HEADERS, "eta": "9999-12-31T00:00:00+00:00"}, BODY)
    past = TaskMessage.from_wire({**HEADERS, "eta": "2000-01-01T00:00:00"}, BODY)
    assert past.eta == datetime(2000, 1, 1, tzinfo=UTC)  # long past: runs now


@pytest.mark.parametrize("header", ["eta", "expires"])
def test_a_datetime_beyond_utc_range_is_refused(header):
    with pytest.raises(InvalidMessage, match=f"header '{header}' is out of range"):
        TaskMessage.from_wire({**HEADERS, header: "9999-12-31T23:59:59-14:00"}, BODY)


def test_expires_far_ahead_is_fine():
    assert TaskMessage.from_wire({**HEADERS, "expires": "9999-12-31T00:00:00+00:00"}, BODY).expires.year == 9999


@pytest.mark.parametrize("value", [-1, -100])
def test_negative_retries_are_refused(value):
    with pytest.raises(InvalidMessage, match="header 'retries' must be an integer"):
        TaskMessage.from_wire({**HEADERS, "retries": value}, BODY)


@pytest.mark.parametrize("value", [[-5, None], [None, float("nan")], [float("inf"), None]])
def test_negative_or_non_finite_time_limits_are_refused(value):
    with pytest.raises(InvalidMessage, match="header 'timelimit' must hold numbers or null"):
        TaskMessage.from_wire({**HEADERS, "timelimit": value}, BODY)


@pytest.mark.parametrize("task_id", ["a\x00b", "x" * 256, 12345, ["id"], "line\nbreak"])
def test_ids_that_cannot_name_a_result_are_refused(task_id):
    assert not usable_id(task_id)
    with pytest.raises(InvalidMessage, match="header 'id' must be a printable string of 1-255 characters"):
        TaskMessage.from_wire({**HEADERS, "id": task_id}, BODY)


@pytest.mark.parametrize("name", ["t" * 256, ["x"], "tab\there"])
def test_bad_task_names_are_refused_with_a_bounded_reason(name):
    with pytest.raises(InvalidMessage, match="header 'task' must be a printable string") as excinfo:
        TaskMessage.from_wire({**HEADERS, "task": name}, BODY)
    assert len(str(excinfo.value)) < 400


@pytest.mark.parametrize("embed", [{"callbacks": "x"}, {"errbacks": {}}, {"chain": 1}, {"chord": []}])
def test_embed_fields_must_have_their_types(embed):
    with pytest.raises(InvalidMessage, match="embed '(callbacks|errbacks|chain|chord)' must be"):
        TaskMessage.from_wire(HEADERS, [[], {}, embed])


def test_a_protocol_1_message_is_named_as_such():
    with pytest.raises(InvalidMessage, match="task protocol 1 message \\(task 'add', id 'p-1'\\)"):
        TaskMessage.from_wire({}, {"task": "add", "id": "p-1", "args": [1, 2], "kwargs": {}})


def test_headers_must_be_a_mapping():
    with pytest.raises(InvalidMessage, match="message headers must be a mapping, got list"):
        TaskMessage.from_wire(["task", "id"], BODY)
