"""TaskResult admin actions (run again, revoke) through the Django test client, with a real worker."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from django_tasks_q import AsyncResult
from django_tasks_q.models import Revocation, TaskResult
from testproject.videos.tasks import add
from tests.workers import WorkerProcess

URL = "admin:django_tasks_q_taskresult_changelist"


@pytest.fixture
def embedded(settings, transactional_db):
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": "django://"}


def act(client, action: str, *task_ids: str):
    pks = [str(pk) for pk in TaskResult.objects.filter(task_id__in=task_ids).values_list("pk", flat=True)]
    return client.post(reverse(URL), {"action": action, "_selected_action": pks}, follow=True)


def test_run_again_sends_the_same_call_and_revoke_stores_a_revoke(embedded, admin_client):
    with WorkerProcess("django://", "-P", "threads", "-c", "2", "-n", "actions@%h"):
        first = add.delay(2, 3)
        assert first.get(timeout=20) == 5
        page = act(admin_client, "run_again", first.id).content.decode()
        [new_id] = re.findall(r"testproject\.videos\.tasks\.add\[([0-9a-f-]{36})\]", page)
        assert new_id != first.id and AsyncResult(new_id).get(timeout=20) == 5
        assert TaskResult.objects.get(task_id=new_id).args == [2, 3]

        later = add.apply_async((1, 1), queue="nobody")  # waits where no worker looks: no write races the revoke
        TaskResult.objects.get_or_create(task_id=later.id, defaults={"state": "PENDING", "task_name": add.name})
        assert "revoked 1 task(s)" in act(admin_client, "revoke", later.id).content.decode().lower()
        assert Revocation.objects.filter(task_id=later.id).exists() and later.state == "REVOKED"


def test_staff_without_the_change_permission_cannot_act(embedded, client):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_taskresult"))
    client.force_login(viewer)
    row = TaskResult.objects.create(task_id="t-1", task_name=add.name, state="SUCCESS", args=[1, 1])
    page = client.get(reverse(URL)).content.decode()
    assert "t-1" in page and "run_again" not in page and "revoke" not in page
    act(client, "run_again", row.task_id)
    act(client, "revoke", row.task_id)
    assert TaskResult.objects.count() == 1 and not Revocation.objects.exists()  # nothing sent, nothing revoked
