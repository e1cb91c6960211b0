"""The Worker admin, rendered through the Django test client, with a real worker writing its row."""

from __future__ import annotations

import socket

from django.urls import reverse

from django_tasks_q.models import Worker
from testproject.videos.tasks import add
from tests.workers import WorkerProcess

from .test_spine import wait_until

NAME = f"admined@{socket.gethostname()}"
FAST = {"TASKS_Q_WORKER_HEARTBEAT": "0.3"}


def test_a_live_worker_is_listed_online_then_offline_once_killed_never_deleted(admin_client, settings,
                                                                              transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "django://"}
    Worker.objects.all().delete()  # a worker of another module may have written its last row after a flush
    url = reverse("admin:django_tasks_q_worker_changelist")
    worker = WorkerProcess("django://", "-P", "threads", "-c", "3", "-Q", "default,videos", "-n", "admined@%h",
                           env=FAST).start()
    try:
        assert add.delay(1, 2).get(timeout=20) == 3
        wait_until(lambda: (row := Worker.objects.filter(hostname=NAME).first()) and row.processed == 1, timeout=10)
        page = admin_client.get(url).content.decode()
        assert NAME in page and "icon-yes.svg" in page and "default, videos" in page
        online = admin_client.get(url, {"online": "yes"}).content.decode()
        assert NAME in online
        pk = Worker.objects.get(hostname=NAME).pk
        detail = admin_client.get(reverse("admin:django_tasks_q_worker_change", args=[pk])).content.decode()
        assert str(worker.process.pid) in detail and "threads" in detail and "django://" in detail
        assert admin_client.get(reverse("admin:django_tasks_q_worker_add")).status_code == 403  # workers write rows
    finally:
        worker.kill()  # SIGKILL: no clean stop is written; the row must age into "offline"
    wait_until(lambda: not Worker.objects.get(hostname=NAME).is_online(), timeout=10)
    offline = admin_client.get(url, {"online": "no"}).content.decode()
    assert NAME in offline and "icon-no.svg" in offline
    assert NAME not in admin_client.get(url, {"online": "yes"}).content.decode()
