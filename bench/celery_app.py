"""The peer: the same two tasks in a plain Celery app (broker URL from BENCH_BROKER_URL)."""

import os

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_default_queue = "default"


@app.task(name="testproject.videos.tasks.noop")
def noop():
    return None


@app.task(name="testproject.videos.tasks.touch", ignore_result=True)
def touch(path):
    with open(path, "w") as fh:
        fh.write("done")
