"""``pip install django-tasks-q[redis]``: broker and results on a real Redis.

kombu's Redis transport imports ``packaging``, which only kombu's own
``redis`` extra requires: without ``kombu[redis]`` in our extra the worker
never consumes.
"""

from .sites import check_round_trip


def test_redis_extra_round_trip_on_redis(dists, redis_url, tmp_path_factory):
    site = check_round_trip(tmp_path_factory.mktemp("install-redis"), dists.wheel, "redis",
                            broker_url=redis_url, result_backend=redis_url)
    print(f"[redis]: {site.report()}")
