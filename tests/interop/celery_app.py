"""A plain Celery app whose tasks carry the same names as the testproject's.

Celery workers, clients, ``celery inspect`` and Flower in the interop suite
load this module (``celery -A tests.interop.celery_app``). The broker and
result backend come from ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``
so a test hands the same servers to both sides. Task bodies mirror the
testproject's; ``whoami`` returns the worker's hostname, so a test names
Celery and our workers differently (``-n``) to see which side ran a task.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from kombu import Queue

app = Celery("interop", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "memory://"),
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
    task_protocol=2,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_extended=True,
    task_default_queue="default",
    # declared as the testproject declares them (TASKS_Q["QUEUES"]): RabbitMQ refuses a second,
    # different declaration of a queue, so a mixed fleet must agree on x-max-priority
    task_queues=[Queue("default", routing_key="default"),
                 Queue("videos", routing_key="videos", queue_arguments={"x-max-priority": 10})],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # our Redis transport renews what a live worker holds; Celery's does not (see docs/migrating.md)
    broker_transport_options={"visibility_timeout": 3600},
)

VIDEOS = "testproject.videos.tasks."


@app.task(name=VIDEOS + "add")
def add(x, y):
    return x + y


@app.task(name=VIDEOS + "fail")
def fail(message="boom"):
    raise ValueError(message)


@app.task(name=VIDEOS + "sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name=VIDEOS + "echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name=VIDEOS + "whoami", bind=True)
def whoami(self):
    r = self.request
    return {"id": r.id, "retries": r.retries, "queue": (r.delivery_info or {}).get("routing_key"),
            "hostname": r.hostname, "eta": r.eta}


@app.task(name="testproject.videos.workflow_tasks.record_id")
def record_id(task_id, *, path):
    """An old-style errback, as the testproject's: writes the failed task's id to ``path``."""
    import json

    with open(path, "w") as fh:
        fh.write(json.dumps(task_id))
    return task_id


@app.task(name=VIDEOS + "naps")
def naps(seconds, chunk=None):
    """As the testproject's: sleep in ``chunk``-second naps and report a soft time limit."""
    from celery.exceptions import SoftTimeLimitExceeded

    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            time.sleep(chunk or seconds)
    except SoftTimeLimitExceeded as exc:
        return {"soft_limit": str(exc), "after": round(time.monotonic() - started, 2)}
    return {"slept": seconds}


@app.task(name=VIDEOS + "tally")
def tally(values, path):
    """As the testproject's chord body: one line per run appended to ``path`` (how often it ran)."""
    with open(path, "a") as fh:
        fh.write(f"{len(values)} {sum(values)}\n")
    return sum(values)


@app.task(name=VIDEOS + "mark")
def mark(path, note="ran"):
    """As the testproject's: one line per run appended to ``path`` (how often, in which order, when)."""
    with open(path, "a") as fh:
        fh.write(f"{note} {time.time():.3f}\n")
    return note
