"""``async def`` tasks on real workers, and ``adelay`` / ``aget`` from async code.

Each worker thread runs coroutine tasks on one loop of its own, reused from
task to task; a soft time limit cancels the coroutine (its ``finally`` and
``except CancelledError`` run) and fails the task; ``self.retry()`` works as
in a sync task.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from django_tasks_q.exceptions import SoftTimeLimitExceeded
from testproject.videos.tasks import async_flaky, async_nap, async_overrun
from tests.integration.test_spine import wait_until
from tests.workers import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("pool", ["solo", "threads", "asyncio"])
def test_async_tasks_on_a_worker(pool, tmp_path):
    noted = tmp_path / "cancelled.txt"
    with WorkerProcess("django://", "-P", pool, "-c", "1", "-n", f"async-{pool}@%h"):
        first, second = async_nap.delay(0.05, "a"), async_nap.delay(0.05, "b")
        one, two = first.get(timeout=30), second.get(timeout=30)
        assert (one["note"], two["note"]) == ("a", "b")
        assert one["loop"] == two["loop"]  # the thread's loop, not a new one per task

        overrun = async_overrun.delay(str(noted))
        with pytest.raises(SoftTimeLimitExceeded):
            overrun.get(timeout=30)
        wait_until(noted.exists, timeout=5)  # (on the asyncio pool the clean-up runs on the loop, just after)
        assert noted.read_text() == "cancelled"  # the coroutine was cancelled, and cleaned up

        retried = async_flaky.delay(2)
        assert retried.get(timeout=30) == 1
        assert async_nap.delay(0, "after").get(timeout=30)["loop"] == one["loop"]  # the loop survived it all


def test_adelay_and_aget_from_async_code():
    async def view():
        result = await async_nap.adelay(0.01, "from a view")
        return await result.aget(timeout=30)

    with WorkerProcess("django://", "-P", "threads", "-c", "2", "-n", "async-view@%h"):
        assert asyncio.run(view())["note"] == "from a view"

        async def too_soon():
            result = await async_nap.adelay(1, "slow")
            await result.aget(timeout=0.3)

        with pytest.raises(Exception, match="not ready after 0.3s"):
            asyncio.run(too_soon())


def test_a_thousand_sleeping_tasks_share_one_loop(redis_url, broker, settings):
    """1,000 tasks of ``asyncio.sleep(0.1)`` (100 s one after another) in one process with ``-P asyncio``."""
    broker(redis_url, RESULT_BACKEND=redis_url.replace("/0", "/1"))
    results = async_nap.delay_many([(0.1, str(i)) for i in range(1000)])
    with WorkerProcess(redis_url, "-P", "asyncio", "-c", "500", "-n", "async-load@%h",
                       env={"TASKS_Q_RESULT_BACKEND": redis_url.replace("/0", "/1")}):
        started = time.monotonic()
        outcomes = [result.get(timeout=60) for result in results]
        elapsed = time.monotonic() - started
    assert [outcome["note"] for outcome in outcomes] == [str(i) for i in range(1000)]
    assert len({outcome["loop"] for outcome in outcomes}) == 1  # one loop for the whole process
    assert elapsed < 20, f"1,000 x sleep(0.1) took {elapsed:.1f}s on one process (100 s if run one by one)"
