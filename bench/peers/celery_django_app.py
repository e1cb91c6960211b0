"""The ``pgresults`` row's Celery peer: Celery with django-celery-results (``result_backend="django-db"``).

The same no-op and marker tasks as ``bench/celery_app.py`` (same names, so
the wire messages are alike), but every no-op's result is stored as a row of
django-celery-results' ``TaskResult``, the way a Django site runs Celery.
``django.setup()`` runs here, before the app is used, since the result
backend is Django models. ``BENCH_BROKER_URL`` is the broker (Redis).
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.celery_django_settings")
django.setup()

from celery import Celery  # noqa: E402

app = Celery("bench_django", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
             backend="django-db")
app.conf.task_default_queue = "default"


@app.task(name="testproject.videos.tasks.noop")
def noop():
    return None


@app.task(name="testproject.videos.tasks.touch", ignore_result=True)
def touch(path):
    with open(path, "w") as fh:
        fh.write("done")
