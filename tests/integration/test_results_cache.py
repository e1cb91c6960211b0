"""``RESULT_BACKEND = "cache://results"`` on a real worker: results and a chord through django-redis.

The worker is a ``manage.py taskworker`` subprocess whose settings add the
cache alias (``tests/integration/cache_settings.py``); this process points
the same alias at the same Redis database. Both read and write only through
Django's cache framework.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from django_tasks_q import chord
from django_tasks_q.exceptions import ChordError
from testproject.videos.tasks import add, fail, tally
from tests.workers import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_stores_results_and_counts_a_chord_in_a_django_redis_cache(redis_url, broker, settings, tmp_path):
    location, prefix = redis_url.rsplit("/", 1)[0] + "/3", f"it{uuid.uuid4().hex[:10]}"
    settings.CACHES = {**settings.CACHES, "results": {"BACKEND": "django_redis.cache.RedisCache",
                                                      "LOCATION": location, "KEY_PREFIX": prefix}}
    broker(redis_url, RESULT_BACKEND="cache://results")
    env = {"DJANGO_SETTINGS_MODULE": "tests.integration.cache_settings", "TASKS_Q_RESULT_BACKEND": "cache://results",
           "TESTPROJECT_RESULTS_CACHE": location, "TESTPROJECT_RESULTS_CACHE_PREFIX": prefix}
    tallies = tmp_path / "tally"
    with WorkerProcess(redis_url, "-P", "threads", "-c", "4", "-n", "cache-results@%h", env=env) as worker:
        single = add.delay(2, 3)
        assert single.get(timeout=30) == 5

        result = chord([add.s(i, i) for i in range(6)], tally.s(str(tallies))).delay()
        assert result.get(timeout=30) == 30  # the body got every member's result: 0 + 2 + ... + 10
        assert tallies.read_text().splitlines() == ["6 30"]  # once, with all six

        failed = chord([add.s(1, 1), fail.si("member broke")], tally.s(str(tallies))).delay()
        with pytest.raises(ChordError, match="ValueError: member broke"):
            failed.get(timeout=30)
        output = worker.output()
    assert tallies.read_text().splitlines() == ["6 30"]  # the failed chord's body never ran
    assert "results:     cache://results" in output  # the banner: the worker used the cache backend
    assert "W005" not in output and "Traceback" not in output

    raw = redis.Redis.from_url(location)
    try:  # what the worker wrote went through django-redis: its prefix, its version, RESULT_EXPIRES as TTL
        assert 0 < raw.ttl(f"{prefix}:1:celery-task-meta-{single.id}") <= 86400  # the default RESULT_EXPIRES
        assert raw.keys(f"{prefix}:1:celery-taskset-meta-{result.parent.id}.count") == []  # counted, cleaned up
    finally:
        raw.close()
