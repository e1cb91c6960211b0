"""testproject's settings plus a django-redis cache alias, for workers that keep results in a cache.

Workers started by ``test_results_cache.py`` get ``DJANGO_SETTINGS_MODULE``
pointed here: the alias ``"results"`` is a ``django_redis.cache.RedisCache``
at ``TESTPROJECT_RESULTS_CACHE`` (a Redis URL) with the key prefix
``TESTPROJECT_RESULTS_CACHE_PREFIX``, so the worker and the test read one
cache. Everything else comes from ``testproject.settings``.
"""

import os

from testproject.settings import *  # noqa: F403 - the site's settings, one alias more

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "results": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": os.environ["TESTPROJECT_RESULTS_CACHE"],
                "KEY_PREFIX": os.environ.get("TESTPROJECT_RESULTS_CACHE_PREFIX", "")},
}
