"""``pip install django-tasks-q[redis]``: broker and results on a real Redis.

kombu's Redis transport imports ``packaging``, which only kombu's own
``redis`` extra requires: without ``kombu[redis]`` in our extra the worker
never consumes. The extra also brings django-redis, which the cache result
backend (``RESULT_BACKEND = "cache"``) runs on.
"""

from .sites import ANSWER, Site, check_round_trip

#: the cache result backend over a django-redis alias, in the installed site
CACHE_BACKEND = '''\
import json
from django.test import override_settings
from django_tasks_q.results.cache import CacheBackend
with override_settings(CACHES={{"default": {{"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
                                "results": {{"BACKEND": "django_redis.cache.RedisCache", "LOCATION": {url!r},
                                             "KEY_PREFIX": "install-test"}}}}):
    backend = CacheBackend("results")
    backend.mark("install-test-id", "SUCCESS", result=[1, 2])
    meta = backend.meta("install-test-id")
    backend.forget("install-test-id")
print({answer!r} + json.dumps({{"state": meta.state, "result": meta.result}}))
'''


def test_redis_extra_round_trip_on_redis(dists, redis_url, tmp_path_factory):
    def cache_backend_keeps_a_result(site: Site) -> None:
        got = site.shell("cache result backend", CACHE_BACKEND.format(url=redis_url, answer=ANSWER))
        if got != {"state": "SUCCESS", "result": [1, 2]}:
            raise site.failure(f"the cache backend over django-redis read back {got!r}")

    site = check_round_trip(tmp_path_factory.mktemp("install-redis"), dists.wheel, "redis",
                            broker_url=redis_url, result_backend=redis_url, also=cache_backend_keeps_a_result)
    print(f"[redis]: {site.report()}")
