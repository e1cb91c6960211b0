"""The Celery peer: the same tasks in a plain Celery app.

``BENCH_BROKER_URL`` is the broker; ``BENCH_RESULT_BACKEND`` the result
backend, unset (Celery's default: no results) except for the round-trip row.
"""

import os

from celery import Celery

from bench import counter

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("BENCH_RESULT_BACKEND") or None)
app.conf.task_default_queue = "default"


@app.task(name="testproject.videos.tasks.noop")
def noop():
    return None


@app.task(name="testproject.videos.tasks.add")
def add(x, y):
    return x + y


@app.task(name="bench.ours_app.tasks.incr")
def incr():
    return counter.incr()  # one INCR on BENCH_COUNTER_URL (the prefork2 row)


@app.task(name="testproject.videos.tasks.touch", ignore_result=True)
def touch(path):
    with open(path, "w") as fh:
        fh.write("done")
