"""The TaskResult admin, rendered through the Django test client."""

from __future__ import annotations

import pytest
from django.urls import reverse

from django_tasks_q.models import TaskResult


@pytest.fixture
def rows(db):
    TaskResult.objects.create(task_id="ok-1", task_name="videos.compress", state="SUCCESS", queue="videos",
                              worker="w1@host", args=[7], kwargs={"steps": 3}, result={"done": True}, runtime=0.25)
    TaskResult.objects.create(task_id="bad-1", task_name="reports.build", state="FAILURE", queue="reports",
                              worker="w2@host", traceback="Traceback...\nValueError: <b>nope</b>",
                              result={"exc_type": "ValueError", "exc_message": ["nope"], "exc_module": "builtins"})


def test_list_filters_and_search(admin_client, rows):
    url = reverse("admin:django_tasks_q_taskresult_changelist")
    page = admin_client.get(url).content.decode()
    assert "ok-1" in page and "bad-1" in page and "0.250s" in page
    failed = admin_client.get(url, {"state": "FAILURE"}).content.decode()
    assert "bad-1" in failed and "ok-1" not in failed
    by_queue = admin_client.get(url, {"queue": "videos"}).content.decode()
    assert "ok-1" in by_queue and "bad-1" not in by_queue
    by_worker = admin_client.get(url, {"worker": "w2@host"}).content.decode()
    assert "bad-1" in by_worker and "ok-1" not in by_worker
    searched = admin_client.get(url, {"q": "reports.build"}).content.decode()
    assert "bad-1" in searched and "ok-1" not in searched


def test_detail_shows_args_result_and_escaped_traceback(admin_client, rows):
    pk = TaskResult.objects.get(task_id="bad-1").pk
    page = admin_client.get(reverse("admin:django_tasks_q_taskresult_change", args=[pk])).content.decode()
    assert "ValueError: &lt;b&gt;nope&lt;/b&gt;" in page  # escaped, not rendered as HTML
    ok = TaskResult.objects.get(task_id="ok-1").pk
    page = admin_client.get(reverse("admin:django_tasks_q_taskresult_change", args=[ok])).content.decode()
    assert "&quot;steps&quot;: 3" in page and "&quot;done&quot;: true" in page


def test_results_are_read_only(admin_client, rows):
    assert admin_client.get(reverse("admin:django_tasks_q_taskresult_add")).status_code == 403
    pk = TaskResult.objects.get(task_id="ok-1").pk
    response = admin_client.post(reverse("admin:django_tasks_q_taskresult_change", args=[pk]), {"state": "FAILURE"})
    assert response.status_code == 403
    assert TaskResult.objects.get(pk=pk).state == "SUCCESS"
