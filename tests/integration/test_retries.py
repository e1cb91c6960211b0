"""Retries end to end: a real worker re-runs tasks through the broker's delayed delivery.

One worker per broker (module scope) serves every test here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from django_tasks_q.core.states import TaskState
from django_tasks_q.exceptions import MaxRetriesExceededError
from django_tasks_q.models import TaskResult
from testproject.videos.tasks import backoff_probe, flaky, persistent
from tests.workers import WorkerProcess

from .test_spine import wait_until


@pytest.fixture(scope="module")
def retry_worker(broker_url, django_db_blocker):
    with WorkerProcess(broker_url, "-Q", "default", "-P", "threads", "-c", "2", "-n", "retries@%h") as w:
        yield w


def test_retries_with_countdown_until_success_without_a_limit(retry_worker, use_broker, admin_client):
    started = time.monotonic()
    result = persistent.delay(5, countdown=0.8)  # max_retries=None: five attempts, past the default of 3
    seen: list = []  # every change of the row the test saw, with its time: the failure message shows them

    def retry_recorded() -> bool:  # state and cause read together: the next attempt may start any moment
        row = TaskResult.objects.filter(task_id=result.id).values_list("state", "result").first()
        if not seen or seen[-1][1] != row:
            seen.append((round(time.monotonic() - started, 3), row))
        return row is not None and row[0] == TaskState.RETRY and (row[1] or {}).get("exc_type") == "ConnectionError"

    try:  # visible between attempts, with the exception that caused it
        wait_until(retry_recorded, timeout=15)
    except AssertionError:
        raise AssertionError(f"no RETRY row seen; the row went {seen}\n{retry_worker.output()[-3000:]}") from None
    assert result.get(timeout=30) == 5
    assert time.monotonic() - started >= 4 * 0.8  # each retry waited its countdown
    row = TaskResult.objects.get(task_id=result.id)
    assert row.state == TaskState.SUCCESS and row.retries == 4 and result.retries == 4

    page = admin_client.get("/admin/django_tasks_q/taskresult/").content.decode()
    assert "column-retries" in page  # the attempt count is a column of the results list
    detail = admin_client.get(f"/admin/django_tasks_q/taskresult/{row.pk}/change/").content.decode()
    assert "Retries" in detail


def test_exhausted_retries_fail_with_max_retries_exceeded_chained_to_the_cause(retry_worker, use_broker):
    result = flaky.delay(10)  # max_retries=2: attempts 1..3 fail, the third gives up
    with pytest.raises(MaxRetriesExceededError, match="gave up after 2 retries"):
        result.get(timeout=30)
    assert result.state == TaskState.FAILURE and result.retries == 2
    assert "ConnectionError: attempt 3 failed" in result.traceback  # the original, recorded as the cause
    assert "direct cause" in result.traceback


def test_autoretry_backs_off_then_gives_up_or_succeeds(retry_worker, use_broker, tmp_path):
    times = tmp_path / "attempts"
    assert backoff_probe.delay(str(times), 3).get(timeout=30) == 3
    stamps = [float(line) for line in Path(times).read_text().split()]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    # retry_backoff=0.1, max 0.3, no jitter: 0.1, 0.2, then 0.4 capped at 0.3
    assert len(gaps) == 3
    assert all(gap >= wanted - 0.02 for gap, wanted in zip(gaps, [0.1, 0.2, 0.3])), gaps

    given_up = backoff_probe.delay(str(tmp_path / "never"), 99)
    with pytest.raises(MaxRetriesExceededError) as excinfo:
        given_up.get(timeout=30)
    assert "OSError: attempt 4 failed" in str(excinfo.value)  # max_retries=3: the fourth attempt gives up
    assert len((tmp_path / "never").read_text().split()) == 4
    assert given_up.retries == 3

    excluded = backoff_probe.delay(str(tmp_path / "once"), 99, error="FileNotFoundError")
    with pytest.raises(FileNotFoundError):  # dont_autoretry_for: fails at once, as itself
        excluded.get(timeout=30)
    assert excluded.retries == 0 and len((tmp_path / "once").read_text().split()) == 1
