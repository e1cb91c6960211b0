"""Celery in a Django site, the way a Django project runs it (the ``rss`` row's ``celery-site``).

``django.setup()`` with ``bench/peers/celery_site_settings.py`` (the
testproject's ``django.contrib`` apps: admin, auth, contenttypes, sessions,
messages, staticfiles), then a Celery app configured from the Django
settings (``config_from_object("django.conf:settings", namespace="CELERY")``),
with Celery's Django fix-up active, as ``celery -A proj worker`` has it in a
site. The same no-op and marker tasks as ``bench/celery_app.py``;
``BENCH_BROKER_URL`` is the broker, ``BENCH_RESULT_BACKEND`` the result
backend (unset: none, as for plain Celery in the same row).
"""

import os

import django

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.peers.celery_site_settings"
django.setup()

from celery import Celery  # noqa: E402

app = Celery("bench_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.broker_url = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
app.conf.result_backend = os.environ.get("BENCH_RESULT_BACKEND") or None
app.conf.task_default_queue = "default"


@app.task(name="testproject.videos.tasks.noop")
def noop():
    return None


@app.task(name="testproject.videos.tasks.touch", ignore_result=True)
def touch(path):
    with open(path, "w") as fh:
        fh.write("done")
