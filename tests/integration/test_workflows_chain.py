"""Chains, map/starmap/chunks, link and link_error through a real worker on each broker.

The expected values are the seeds' printed results (../shared/seeds/003_*).
"""

from __future__ import annotations

import json
import time

import pytest

from django_tasks_q import AsyncResult, chain
from testproject.videos.tasks import add, fail
from testproject.videos.workflow_tasks import record_errback, record_id, record_value


def wait_for_file(path, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout}s")


def test_seed_chains_and_maps(worker, use_broker):
    result = chain(add.s(1, 2), add.s(3)).delay()  # ((1 + 2) + 3)
    assert result.get(timeout=15) == 6 and result.status == "SUCCESS"
    assert not hasattr(result, "results")
    assert result.parent.get(timeout=15) == 3 and result.parent.parent is None
    assert (add.s(1, 2) | add.s(3) | add.si(10, 10)).delay().get(timeout=15) == 20
    assert chain(add.s(1), add.s(3)).delay(3).get(timeout=15) == 7  # ((3 + 1) + 3)
    assert add.s(1).delay(20).get(timeout=15) == 21
    assert add.starmap(zip(range(10), range(100))).delay().get(timeout=15) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert add.chunks(zip(range(100), range(100)), 10).delay().get(timeout=15) == [
        [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
        [20, 22, 24, 26, 28, 30, 32, 34, 36, 38],
        [40, 42, 44, 46, 48, 50, 52, 54, 56, 58],
        [60, 62, 64, 66, 68, 70, 72, 74, 76, 78],
        [80, 82, 84, 86, 88, 90, 92, 94, 96, 98],
        [100, 102, 104, 106, 108, 110, 112, 114, 116, 118],
        [120, 122, 124, 126, 128, 130, 132, 134, 136, 138],
        [140, 142, 144, 146, 148, 150, 152, 154, 156, 158],
        [160, 162, 164, 166, 168, 170, 172, 174, 176, 178],
        [180, 182, 184, 186, 188, 190, 192, 194, 196, 198],
    ]
    assert record_value.map([]).delay().get(timeout=15) == []


def test_failing_member_fails_the_chain_and_runs_errbacks(worker, use_broker, tmp_path):
    ran, errors = tmp_path / "ran", tmp_path / "errors"
    result = chain(add.s(1, 2), fail.si("broken step"), record_value.s(str(ran))).apply_async(
        link_error=record_errback.s(str(errors)))
    with pytest.raises(ValueError, match="broken step"):
        result.get(timeout=15)  # the last step never ran, yet its result says why
    assert result.state == "FAILURE" and "broken step" in result.traceback
    assert result.parent.state == "FAILURE" and result.parent.parent.get(timeout=5) == 3
    got = json.loads(wait_for_file(errors))
    assert got["id"] == result.parent.id and got["task"] == "testproject.videos.tasks.fail"
    assert got["args"] == ["broken step"] and got["exc"] == "ValueError: broken step"
    assert "Traceback" in got["traceback"] and "broken step" in got["traceback"]
    time.sleep(0.5)
    assert not ran.exists()


def test_link_gets_the_result_and_old_style_errback_the_id(worker, use_broker, tmp_path):
    values, ids = tmp_path / "values", tmp_path / "ids"
    ok = add.apply_async((2, 3), link=record_value.s(str(values)))
    assert ok.get(timeout=15) == 5
    assert json.loads(wait_for_file(values)) == 5
    bad = fail.apply_async(("x",), link_error=record_id.s(path=str(ids)).set(queue="videos"))
    assert json.loads(wait_for_file(ids)) == bad.id  # one positional parameter: sent as a message with the id
    assert isinstance(bad, AsyncResult) and bad.failed()
