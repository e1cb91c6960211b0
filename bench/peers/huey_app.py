"""Huey's side of the benchmark: a ``RedisHuey`` with library defaults.

``BENCH_BROKER_URL`` names the Redis server. ``BENCH_HUEY_NOTIFY=1`` turns on
``notify_result`` (a BLPOP wake-up instead of polling in ``Result.get``), which
is not Huey's default: the round-trip row reports it as extra information only.
"""

import os

from huey import RedisHuey

from bench import counter

huey = RedisHuey("bench", url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
                 notify_result=os.environ.get("BENCH_HUEY_NOTIFY") == "1")


@huey.task()
def noop():
    return None  # Huey stores no result for None (store_none=False): nothing is written


@huey.task()
def add(x, y):
    return x + y


@huey.task()
def incr():
    return counter.incr()  # one INCR on BENCH_COUNTER_URL (the prefork2 row); the value is stored


@huey.task()
def touch(path):
    with open(path, "w") as fh:
        fh.write("done")
