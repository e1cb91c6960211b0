"""The routing admin through the Django test client: queue and route forms, the route list, the preview."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from django_tasks_q.core.routing import route_table
from django_tasks_q.models import Queue, TaskRoute

QUEUE_ADD = reverse("admin:django_tasks_q_queue_add")
QUEUE_LIST = reverse("admin:django_tasks_q_queue_changelist")
ROUTE_ADD = reverse("admin:django_tasks_q_taskroute_add")
ROUTE_LIST = reverse("admin:django_tasks_q_taskroute_changelist")
PREVIEW = reverse("admin:django_tasks_q_taskroute_preview")


def queue_data(**overrides) -> dict:
    data = {"name": "media", "description": "", "exchange": "", "exchange_type": "direct", "routing_key": "",
            "max_priority": "", "durable": "on"}
    data.update(overrides)
    return data


def route_data(queue: Queue, **overrides) -> dict:
    data = {"pattern": "testproject.videos.*", "queue": str(queue.pk), "order": "10", "enabled": "on",
            "description": "", "routing_key": "", "priority": ""}
    data.update(overrides)
    return data


def errors_of(response, field: str) -> list[str]:
    return list(response.context["adminform"].form.errors.get(field, []))


def decided_row(page: str) -> str:
    rows = re.findall(r'<tr class="decided">(.*?)</tr>', page, re.S)
    assert len(rows) == 1, page
    return re.sub(r"\s+", " ", rows[0])


def preview(client, task_name: str) -> str:
    response = client.get(PREVIEW, {"task": task_name})
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def media(db) -> Queue:
    return Queue.objects.create(name="media")


@pytest.fixture(autouse=True)
def fresh_table(django_db_setup, django_db_blocker):
    """Start from the rows in the database, and leave none cached once this test's rows are rolled back."""
    with django_db_blocker.unblock():
        route_table().reload()
    yield
    with django_db_blocker.unblock():  # autouse: torn down after the db fixture's rollback
        route_table().reload()


# -- queues --------------------------------------------------------------------------


def test_add_a_queue(admin_client):
    response = admin_client.post(QUEUE_ADD, queue_data(name="media", exchange="media.x", exchange_type="topic",
                                                       routing_key="media.#", max_priority="10"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    queue = Queue.objects.get(name="media")
    assert (queue.exchange, queue.exchange_type, queue.routing_key, queue.max_priority, queue.durable) == (
        "media.x", "topic", "media.#", 10, True)


def test_a_topic_wildcard_on_a_direct_queue_is_refused(admin_client):
    response = admin_client.post(QUEUE_ADD, queue_data(routing_key="media.*"))
    assert response.status_code == 200
    assert any("wildcards of topic exchanges" in e for e in errors_of(response, "routing_key"))
    assert not Queue.objects.exists()


def test_a_bad_queue_name_is_refused(admin_client):
    response = admin_client.post(QUEUE_ADD, queue_data(name="media queue!"))
    assert response.status_code == 200 and errors_of(response, "name")
    assert not Queue.objects.exists()


def test_queue_list_counts_routes(admin_client, media):
    Queue.objects.create(name="idle", exchange_type="topic", routing_key="idle.#")
    TaskRoute.objects.create(pattern="a.*", queue=media)
    TaskRoute.objects.create(pattern="b.*", queue=media)
    page = admin_client.get(QUEUE_LIST).content.decode()
    assert re.search(r'field-routes_count">2<', page) and re.search(r'field-routes_count">0<', page)
    assert "idle.#" in page and "topic" in page


# -- routes --------------------------------------------------------------------------


def test_add_a_route(admin_client, media):
    response = admin_client.post(ROUTE_ADD, route_data(media, priority="5"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    route = TaskRoute.objects.get()
    assert (route.pattern, route.queue, route.order, route.enabled, route.priority) == (
        "testproject.videos.*", media, 10, True, 5)


@pytest.mark.parametrize("pattern", ["videos/*", "videos.[ab", "videos tasks"])
def test_an_invalid_pattern_is_refused(admin_client, media, pattern):
    response = admin_client.post(ROUTE_ADD, route_data(media, pattern=pattern))
    assert response.status_code == 200 and errors_of(response, "pattern")
    assert not TaskRoute.objects.exists()


def test_route_list_is_in_order_with_matched_tasks(admin_client, media):
    TaskRoute.objects.create(pattern="testproject.videos.tasks.*", queue=media, order=20)
    TaskRoute.objects.create(pattern="reports.build", queue=media, order=5)
    TaskRoute.objects.create(pattern="nothing.*", queue=media, order=10)
    page = admin_client.get(ROUTE_LIST).content.decode()
    positions = [page.index(p) for p in ("reports.build</a>", "nothing.*</a>", "testproject.videos.tasks.*</a>")]
    assert positions == sorted(positions)
    assert "testproject.videos.tasks.add" in page and "no registered task" in page
    assert re.search(r"\((\d+) tasks\)", page)  # the videos glob matches more than are shown
    assert 'id="route-preview-form"' in page


def test_route_form_lists_every_matched_task(admin_client, media):
    route = TaskRoute.objects.create(pattern="testproject.videos.tasks.*", queue=media)
    page = admin_client.get(reverse("admin:django_tasks_q_taskroute_change", args=[route.pk])).content.decode()
    assert "testproject.videos.tasks.add" in page and "testproject.videos.tasks.write_row" in page


def test_enable_and_disable_actions(admin_client, media):
    route = TaskRoute.objects.create(pattern="a.*", queue=media)
    admin_client.post(ROUTE_LIST, {"action": "disable", "_selected_action": [route.pk]})
    assert not TaskRoute.objects.get().enabled
    admin_client.post(ROUTE_LIST, {"action": "enable", "_selected_action": [route.pk]})
    assert TaskRoute.objects.get().enabled


def test_list_editable_order(admin_client, media):
    route = TaskRoute.objects.create(pattern="a.*", queue=media, order=1)
    response = admin_client.post(ROUTE_LIST, {
        "form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": str(route.pk), "form-0-order": "7",
        "form-0-enabled": "on", "_save": "Save"})
    assert response.status_code == 302
    assert TaskRoute.objects.get().order == 7


# -- the preview ---------------------------------------------------------------------


def test_a_matching_route_decides(admin_client, media):
    route = TaskRoute.objects.create(pattern="testproject.videos.*", queue=media, order=10, priority=3)
    page = preview(admin_client, "testproject.videos.tasks.add")
    row = decided_row(page)
    assert f"TaskRoute #{route.pk}" in row and "testproject.videos.*" in row and "<td>media</td>" in row
    assert "is registered in this web process" in page


def test_the_task_option_decides(admin_client, media):
    TaskRoute.objects.create(pattern="reports.*", queue=media)
    page = preview(admin_client, "reports.build")
    row = decided_row(page)
    assert "task option" in row and "<td>reports</td>" in row
    assert "queue=reports" in page  # the registered task's declared option is shown


def test_fields_the_decider_leaves_empty_come_from_later_rules(admin_client, media):
    TaskRoute.objects.create(pattern="testproject.videos.*", queue=media, priority=3)
    page = preview(admin_client, "testproject.videos.tasks.compress")  # declares queue="videos" only
    assert "task option" in decided_row(page)
    result = re.sub(r"\s+", " ", re.search(r'<p id="route-result">(.*?)</p>', page, re.S).group(1))
    assert "queue <strong>videos</strong>" in result and "priority <strong>3</strong>" in result


def test_an_unknown_name_falls_to_the_default_queue(admin_client, media):
    TaskRoute.objects.create(pattern="testproject.*", queue=media)
    page = preview(admin_client, "unknown.task")
    row = decided_row(page)
    assert "DEFAULT_QUEUE" in row and "<td>default</td>" in row
    assert "not registered in this web process" in page


def test_a_lower_order_route_changes_the_preview(admin_client, media):
    TaskRoute.objects.create(pattern="testproject.videos.*", queue=media, order=10)
    assert "<td>media</td>" in decided_row(preview(admin_client, "testproject.videos.tasks.add"))
    urgent = Queue.objects.create(name="urgent")
    first = TaskRoute.objects.create(pattern="testproject.videos.tasks.add", queue=urgent, order=1)
    row = decided_row(preview(admin_client, "testproject.videos.tasks.add"))  # no wait: the preview reloads
    assert f"TaskRoute #{first.pk}" in row and "<td>urgent</td>" in row


def test_a_disabled_route_is_skipped(admin_client, media):
    TaskRoute.objects.create(pattern="unknown.*", queue=media, enabled=False)
    assert "DEFAULT_QUEUE" in decided_row(preview(admin_client, "unknown.task"))


def test_an_empty_preview_shows_only_the_form(admin_client):
    page = admin_client.get(PREVIEW).content.decode()
    assert 'id="route-preview-form"' in page and 'id="route-steps"' not in page


def test_the_preview_needs_staff(client, db):
    response = client.get(PREVIEW, {"task": "unknown.task"})
    assert response.status_code == 302 and "/login/" in response["Location"]
