"""``async def`` tasks on real workers, and ``adelay`` / ``aget`` from async code.

Each worker thread runs coroutine tasks on one loop of its own, reused from
task to task; a soft time limit cancels the coroutine (its ``finally`` and
``except CancelledError`` run) and fails the task; ``self.retry()`` works as
in a sync task.
"""

from __future__ import annotations

import asyncio

import pytest

from django_tasks_q.exceptions import SoftTimeLimitExceeded
from tests.workers import WorkerProcess
from testproject.videos.tasks import async_flaky, async_nap, async_overrun

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("pool", ["solo", "threads"])
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
            result = await async_nap.adelay(5, "slow")
            await result.aget(timeout=0.3)

        with pytest.raises(Exception, match="not ready after 0.3s"):
            asyncio.run(too_soon())
