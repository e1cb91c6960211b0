"""The monitoring JSON API, /metrics and the admin dashboard page, through Django's test client.

Results are written by the real result backend, messages go to the real
embedded broker (django://) and are counted there; the refusals are checked
for every endpoint: anonymous, non-staff, staff without the permission, a
wrong token, a token trying to act, a POST without CSRF.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from django_tasks_q.core.states import TaskState
from django_tasks_q.models import Revocation, TaskResult, Worker
from django_tasks_q.results.backend import describe_exception, get_backend
from django_tasks_q.web.actions import purge
from testproject.videos.tasks import add

pytestmark = pytest.mark.django_db(transaction=True)
QUEUE = "api-tests"
READ_URLS = ["/tasks/workers/", "/tasks/queues/", "/tasks/tasks/", "/tasks/tasks/some-id/", "/tasks/dashboard/",
             "/tasks/metrics", "/admin/django_tasks_q/dashboard/api/workers/"]
ACT_URLS = ["/tasks/tasks/t-failed/retry/", "/tasks/tasks/t-failed/revoke/", f"/tasks/queues/{QUEUE}/purge/"]


def user(name: str, *, staff: bool = True, perms: tuple[str, ...] = ()) -> User:
    account = User.objects.create_user(name, is_staff=staff)
    for codename in perms:
        permission = Permission.objects.get(codename=codename, content_type__app_label="django_tasks_q")
        account.user_permissions.add(permission)
    return account


def client_for(account: User | None, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    if account is not None:
        client.force_login(account)
    return client


@pytest.fixture
def recorded(settings):
    """Three results as workers record them, two workers (one gone quiet), and a queue holding two messages."""
    settings.TASKS_Q = {**settings.TASKS_Q, "API_TOKEN": "s3cret-token"}
    purge(QUEUE)
    backend = get_backend()
    backend.mark("t-ok-1", TaskState.SUCCESS, result=4, task_name=add.name, runtime=0.02)
    backend.mark("t-ok-2", TaskState.SUCCESS, result=6, task_name=add.name, runtime=3.0)
    try:
        raise ValueError("bad frame 7")
    except ValueError as exc:
        backend.mark("t-failed", TaskState.FAILURE, result=describe_exception(exc), task_name=add.name,
                     traceback="Traceback (most recent call last):\nValueError: bad frame 7", runtime=0.5)
    TaskResult.objects.filter(task_id="t-failed").update(args=[2, 2], kwargs={}, queue=QUEUE)
    backend.mark("t-progress", "PROGRESS", result={"current": 3, "total": 12}, task_name="videos.compress")
    now = timezone.now()
    Worker.objects.create(hostname="alive@host", pool="threads", concurrency=4, queues=[QUEUE, "default"],
                          last_heartbeat=now, heartbeat_interval=5, processed=10, failed=1)
    Worker.objects.create(hostname="gone@host", pool="prefork", concurrency=2, queues=["default"],
                          last_heartbeat=now - timedelta(minutes=5), heartbeat_interval=5)
    add.apply_async((1, 1), queue=QUEUE)
    add.apply_async((2, 2), queue=QUEUE)
    yield
    purge(QUEUE)


def test_every_endpoint_refuses_who_may_not_see_it(recorded):
    nobody, outsider = client_for(None), client_for(user("outsider", staff=False))
    staff_without_view = client_for(user("bare-staff"))
    for url in READ_URLS:
        response = nobody.get(url)
        assert response.status_code == 401 and "log in as a staff user" in response.json()["error"], url
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert outsider.get(url).status_code == 403, url
        refused = staff_without_view.get(url)
        assert refused.status_code == 403 and "view_taskresult" in refused.json()["error"], url
        assert nobody.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401, url
    for url in ACT_URLS:
        assert nobody.post(url).status_code == 401, url
        assert outsider.post(url).status_code == 403, url
        # a token reads but never acts
        assert nobody.post(url, HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 401, url
    assert TaskResult.objects.filter(task_name=add.name).count() == 3  # nothing was sent again
    assert not Revocation.objects.exists()


def test_a_token_reads_the_fleet_but_no_task_data(recorded):
    """API_TOKEN is a scraper's credential: metrics, workers and queues; never arguments, results, tracebacks."""
    client = client_for(None)
    workers = client.get("/tasks/workers/", HTTP_AUTHORIZATION="Bearer s3cret-token").json()["workers"]
    assert [(w["hostname"], w["online"]) for w in workers] == [("alive@host", True), ("gone@host", False)]
    assert client.get("/tasks/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    assert client.get("/tasks/queues/", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    assert client.post("/tasks/workers/", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 405
    for url in ("/tasks/tasks/", "/tasks/tasks/t-failed/", "/tasks/dashboard/",
                "/admin/django_tasks_q/dashboard/api/tasks/t-failed/",
                "/admin/django_tasks_q/dashboard/api/dashboard/"):
        refused = client.get(url, HTTP_AUTHORIZATION="Bearer s3cret-token")
        assert refused.status_code == 403, url
        assert "task data needs a staff session" in refused.json()["error"], url
        assert "bad frame 7" not in refused.content.decode() and "[2, 2]" not in refused.content.decode()


def test_responses_with_task_data_are_not_cached(recorded):
    client = client_for(user("viewer", perms=("view_taskresult",)))
    for url in ("/tasks/tasks/", "/tasks/tasks/t-failed/", "/tasks/dashboard/", "/tasks/workers/", "/tasks/queues/",
                "/admin/django_tasks_q/dashboard/api/dashboard/", "/tasks/tasks/no-such-task/"):
        response = client.get(url)
        directives = {d.strip() for d in response["Cache-Control"].split(",")}
        assert {"private", "no-store"} <= directives, url
    operator = client_for(user("operator", perms=("view_taskresult", "change_taskresult")))
    sent = operator.post("/tasks/tasks/t-failed/retry/")
    assert sent.status_code == 202 and "no-store" in sent["Cache-Control"]


def test_purge_refuses_a_queue_this_site_does_not_know_and_declares_nothing(recorded, monkeypatch):
    """A holder of change_queue must not empty another application's queue, the dead-letter queue, or create one."""
    from kombu import Queue
    from kombu.transport import virtual

    declared = []
    monkeypatch.setattr(Queue, "declare", lambda self, *a, **k: declared.append(self.name))
    monkeypatch.setattr(virtual.Channel, "queue_declare",
                        lambda self, queue=None, *a, **k: declared.append(queue))
    operator = client_for(user("operator", perms=("view_taskresult", "change_queue")))
    for name in ("other-app-queue", "tasksq.dead"):
        refused = operator.post(f"/tasks/queues/{name}/purge/", {"confirm": name})
        assert refused.status_code == 404 and "not a queue of this site" in refused.json()["error"], name
    assert declared == []
    known = {q["name"] for q in operator.get("/tasks/queues/").json()["queues"]}
    assert "other-app-queue" not in known  # and asking for its depth did not create it either
    assert operator.post(f"/tasks/queues/{QUEUE}/purge/", {"confirm": QUEUE}).json() == {"queue": QUEUE, "purged": 2}
    assert declared == []  # purging a known queue declares nothing either


def test_workers_queues_and_tasks_as_staff_see_them(recorded):
    client = client_for(user("viewer", perms=("view_taskresult",)))
    workers = {w["hostname"]: w for w in client.get("/tasks/workers/").json()["workers"]}
    assert workers["alive@host"]["online"] and not workers["gone@host"]["online"]  # offline, not deleted
    assert workers["alive@host"]["queues"] == [QUEUE, "default"] and workers["alive@host"]["processed"] == 10

    queues = {q["name"]: q for q in client.get("/tasks/queues/").json()["queues"]}
    assert queues[QUEUE]["messages"] == 2 and queues[QUEUE]["consumers"] == ["alive@host"]  # read from the broker
    assert {"default", "videos", "reports"} <= set(queues)

    listed = client.get("/tasks/tasks/", {"state": "SUCCESS"}).json()
    assert listed["count"] == 2 and {t["task_id"] for t in listed["tasks"]} == {"t-ok-1", "t-ok-2"}
    assert client.get("/tasks/tasks/", {"name": "compress"}).json()["tasks"][0]["progress"] == {
        "current": 3, "total": 12, "percent": 25.0}
    paged = client.get("/tasks/tasks/", {"limit": 1, "offset": 1}).json()
    assert paged["count"] == 4 and len(paged["tasks"]) == 1
    bad = client.get("/tasks/tasks/", {"state": "DONE"})
    assert bad.status_code == 400 and "unknown state 'DONE'" in bad.json()["error"] and "SUCCESS" in bad.json()["error"]
    assert client.get("/tasks/tasks/", {"limit": "ten"}).status_code == 400
    assert client.get("/tasks/tasks/", {"limit": 100000}).status_code == 400

    detail = client.get("/tasks/tasks/t-failed/").json()
    assert detail["state"] == "FAILURE" and detail["args"] == [2, 2] and "bad frame 7" in detail["traceback"]
    assert detail["result"]["exc_type"] == "ValueError"
    missing = client.get("/tasks/tasks/no-such-task/")
    assert missing.status_code == 404 and "no-such-task" in missing.json()["error"]


def test_actions_need_csrf_and_the_model_permission(recorded):
    viewer = user("viewer", perms=("view_taskresult",))
    assert client_for(viewer, csrf=True).post("/tasks/tasks/t-failed/retry/").status_code == 403
    refused = client_for(viewer).post("/tasks/tasks/t-failed/retry/")
    assert refused.status_code == 403 and "change_taskresult" in refused.json()["error"]

    operator = user("operator", perms=("view_taskresult", "change_taskresult", "change_queue"))
    assert client_for(operator, csrf=True).post("/tasks/tasks/t-failed/retry/").status_code == 403  # no CSRF token
    client = client_for(operator)
    sent = client.post("/tasks/tasks/t-failed/retry/")
    assert sent.status_code == 202 and sent.json()["retry_of"] == "t-failed" and sent.json()["task_id"] != "t-failed"
    queues = {q["name"]: q for q in client.get("/tasks/queues/").json()["queues"]}
    assert queues[QUEUE]["messages"] == 3  # sent again to the queue it ran from

    revoked = client.post("/tasks/tasks/t-progress/revoke/", {"terminate": "1"})
    assert revoked.json() == {"revoked": "t-progress", "terminate": True}
    row = Revocation.objects.get(task_id="t-progress")
    assert row.terminate is True and "api: operator" in row.reason

    unconfirmed = client.post(f"/tasks/queues/{QUEUE}/purge/")
    assert unconfirmed.status_code == 400 and f"confirm='{QUEUE}'" in unconfirmed.json()["error"]
    assert client.post(f"/tasks/queues/{QUEUE}/purge/", {"confirm": QUEUE}).json() == {"queue": QUEUE, "purged": 3}
    assert client_for(viewer).post(f"/tasks/queues/{QUEUE}/purge/", {"confirm": QUEUE}).status_code == 403


def test_metrics_in_prometheus_text_format(recorded):
    response = client_for(user("viewer", perms=("view_taskresult",))).get("/tasks/metrics")
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = response.content.decode().splitlines()
    assert 'tasksq_tasks{state="SUCCESS"} 2' in lines and 'tasksq_tasks{state="FAILURE"} 1' in lines
    assert 'tasksq_tasks{state="PROGRESS"} 1' in lines
    name = add.name
    assert f'tasksq_task_runtime_seconds_bucket{{task="{name}",le="0.025"}} 1' in lines
    assert f'tasksq_task_runtime_seconds_bucket{{task="{name}",le="1.0"}} 2' in lines
    assert f'tasksq_task_runtime_seconds_bucket{{task="{name}",le="+Inf"}} 3' in lines
    assert f'tasksq_task_runtime_seconds_count{{task="{name}"}} 3' in lines
    assert f'tasksq_task_runtime_seconds_sum{{task="{name}"}} 3.52' in lines
    assert "tasksq_workers_online 1" in lines
    assert 'tasksq_worker_processed_total{worker="alive@host"} 10' in lines
    assert f'tasksq_queue_messages{{queue="{QUEUE}"}} 2' in lines
    assert lines.count("# TYPE tasksq_task_runtime_seconds histogram") == 1


def test_the_dashboard_page_is_in_the_admin_for_staff_who_may_view_results(recorded):
    admin = User.objects.create_superuser("boss", email=None, password=None)
    client = client_for(admin)
    index = client.get("/admin/").content.decode()
    assert "/admin/django_tasks_q/dashboard/" in index
    page = client.get("/admin/django_tasks_q/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="tasksq-dashboard"' in html and 'data-api="/admin/django_tasks_q/dashboard/api/"' in html
    assert "django_tasks_q/dashboard.js" in html and 'data-can-act="1"' in html
    data = client.get("/admin/django_tasks_q/dashboard/api/dashboard/").json()
    assert [w["hostname"] for w in data["workers"]] == ["alive@host", "gone@host"]
    assert [t["task_id"] for t in data["running"]] == ["t-progress"]
    assert data["running"][0]["progress"]["percent"] == 25.0
    assert [t["task_id"] for t in data["failures"]] == ["t-failed"]
    assert len(data["hour"]) == 60 and len(data["day"]) == 96
    assert sum(bucket["succeeded"] for bucket in data["hour"]) == 2 and sum(b["failed"] for b in data["hour"]) == 1

    viewer = client_for(user("viewer", perms=("view_taskresult",)))
    assert 'data-can-act="0"' in viewer.get("/admin/django_tasks_q/dashboard/").content.decode()
    assert client_for(user("bare-staff")).get("/admin/django_tasks_q/dashboard/").status_code == 403
    assert client_for(None).get("/admin/django_tasks_q/dashboard/").status_code == 302  # to the login page


@pytest.mark.parametrize("middleware", [True, False])
def test_the_dashboard_page_may_not_be_framed(settings, middleware):
    """Its buttons revoke, retry and purge: DENY comes from the view, not from the project's middleware."""
    if not middleware:
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "XFrameOptions" not in m]
    page = client_for(User.objects.create_superuser("boss", email=None, password=None)).get(
        "/admin/django_tasks_q/dashboard/")
    assert page.status_code == 200 and page["X-Frame-Options"] == "DENY"
