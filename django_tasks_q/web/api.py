"""The JSON API: workers, queues, tasks and one task; retry, revoke and purge.

Mounted by ``path("tasks/", include("django_tasks_q.urls"))`` and, for the
dashboard, under the admin (``admin/dashboard.py``). Every view is guarded
by :mod:`.access`: reading needs staff (or the API token, for workers and
queues only: task data needs the staff session), acting needs a staff
session, CSRF and the model permission. Bad parameters are answered 400
with what was wrong; nothing is guessed. Only known queues are purged.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse

from ..models import TaskResult
from . import actions, snapshot
from .access import can_act, can_read, can_read_tasks, refusal

ACT_ON_TASKS = "django_tasks_q.change_taskresult"
ACT_ON_QUEUES = "django_tasks_q.change_queue"
MAX_LIMIT = 500


@can_read
def workers(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"workers": snapshot.workers()})


@can_read
def queues(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"queues": snapshot.queues()})


@can_read_tasks
def tasks(request: HttpRequest) -> JsonResponse:
    """``?state=FAILURE&name=videos&limit=50&offset=0``: stored results, newest first."""
    state = request.GET.get("state") or None
    if state is not None and state not in snapshot.STATES:
        return refusal(400, f"unknown state {state!r}; one of {', '.join(snapshot.STATES)}")
    try:
        limit = int(request.GET.get("limit", 50))
        offset = int(request.GET.get("offset", 0))
    except ValueError:
        return refusal(400, "limit and offset must be whole numbers")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        return refusal(400, f"limit must be from 1 to {MAX_LIMIT} and offset 0 or more")
    rows = snapshot.tasks(state=state, name=request.GET.get("name") or None)
    return JsonResponse({"count": rows.count(), "limit": limit, "offset": offset,
                         "tasks": [snapshot.task_dict(row) for row in rows[offset:offset + limit]]})


@can_read_tasks
def task(request: HttpRequest, task_id: str) -> JsonResponse:
    found = snapshot.task_detail(task_id)
    if found is None:
        return refusal(404, f"no result is recorded for task {task_id!r}")
    return JsonResponse(found)


@can_read_tasks
def dashboard(request: HttpRequest) -> JsonResponse:
    """Everything the dashboard page draws, in one request per refresh."""
    return JsonResponse(snapshot.dashboard())


@can_act(ACT_ON_TASKS)
def retry(request: HttpRequest, task_id: str) -> JsonResponse:
    """Send a recorded task again with the same arguments (a new id), as the admin's *run again*."""
    row = TaskResult.objects.filter(task_id=task_id).first()
    if row is None:
        return refusal(404, f"no result is recorded for task {task_id!r}")
    sent = actions.send_again(row)
    if sent is None:
        return refusal(409, f"task {task_id!r} has no recorded task name, so it cannot be sent again")
    return JsonResponse({"task_id": sent.id, "name": row.task_name, "retry_of": task_id}, status=202)


@can_act(ACT_ON_TASKS)
def revoke(request: HttpRequest, task_id: str) -> JsonResponse:
    """``terminate=1`` also stops it if it is running."""
    terminate = request.POST.get("terminate", "") in ("1", "true", "yes", "on")
    actions.revoke([task_id], terminate=terminate, who=f"api: {request.user}")
    return JsonResponse({"revoked": task_id, "terminate": terminate})


@can_act(ACT_ON_QUEUES)
def purge(request: HttpRequest, name: str) -> JsonResponse:
    """Empty a known queue; the request must repeat the queue's name as ``confirm`` (the page asks for it).

    Known: DEFAULT_QUEUE, ``TASKS_Q["QUEUES"]``, ``Queue`` rows and what an online worker consumes -- the
    queues the dashboard lists. Any other name (another application's queue on a shared broker, the
    dead-letter queue) is refused, and nothing is declared.
    """
    if name not in snapshot.queue_names():
        return refusal(404, f"{name!r} is not a queue of this site (DEFAULT_QUEUE, QUEUES, Queue rows or one an "
                            f"online worker consumes): nothing purged")
    if request.POST.get("confirm") != name:
        return refusal(400, f"purging deletes every waiting message: send confirm={name!r} to purge {name!r}")
    try:
        purged = actions.purge(name)
    except Exception as exc:
        return refusal(503, f"could not purge {name!r}: {type(exc).__name__}: {exc}")
    return JsonResponse({"queue": name, "purged": purged})


def urlpatterns() -> list[Any]:
    """The API's URL patterns (also mounted under the admin's dashboard)."""
    from django.urls import path

    from . import metrics

    return [
        path("workers/", workers, name="workers"),
        path("queues/", queues, name="queues"),
        path("queues/<str:name>/purge/", purge, name="purge"),
        path("tasks/", tasks, name="tasks"),
        path("tasks/<str:task_id>/", task, name="task"),
        path("tasks/<str:task_id>/retry/", retry, name="retry"),
        path("tasks/<str:task_id>/revoke/", revoke, name="revoke"),
        path("dashboard/", dashboard, name="dashboard"),
        path("metrics", metrics.metrics, name="metrics"),
    ]
