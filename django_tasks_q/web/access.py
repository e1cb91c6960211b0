"""Who may read the monitoring API and who may act through it.

Reading (GET) takes a logged-in, active staff user with the view permission
on task results. ``Authorization: Bearer <TASKS_Q["API_TOKEN"]>``, the
credential of scrapers and scripts, reads the fleet only -- metrics,
workers, queues (:func:`can_read`); task data (arguments, results,
tracebacks: :func:`can_read_tasks`) takes the staff session, since a
token sits in a Prometheus config and a CI secret. Acting (POST: retry,
revoke, purge) takes a staff session, Django's CSRF check and the model
permission the action names; a token never acts. Anonymous requests are
answered 401, everyone else who may not 403, both as JSON naming what is
missing -- never the data. Every answer is ``Cache-Control: private,
no-store``: no shared cache or browser disk keeps what a task was given.
"""

from __future__ import annotations

import hmac
from functools import wraps
from typing import Any, Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import patch_cache_control
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_POST

from ..conf import settings

VIEW_PERMISSION = "django_tasks_q.view_taskresult"


def refusal(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="django-tasks-q"'
    return response


def has_token(request: HttpRequest) -> bool:
    """The request carries ``Authorization: Bearer <API_TOKEN>`` (compared in constant time)."""
    expected = settings.API_TOKEN
    header = request.headers.get("Authorization", "")
    if not expected or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), expected.encode())


def _staff_problem(request: HttpRequest, permission: str) -> JsonResponse | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return refusal(401, "authentication required: log in as a staff user"
                       + (" or send Authorization: Bearer <API_TOKEN>" if settings.API_TOKEN else ""))
    if not (user.is_active and user.is_staff):
        return refusal(403, f"user {user.get_username()!r} is not staff")
    if not user.has_perm(permission):
        return refusal(403, f"user {user.get_username()!r} lacks the permission {permission}")
    return None


def private(response: HttpResponse) -> HttpResponse:
    """``Cache-Control: private, no-store`` on ``response``."""
    patch_cache_control(response, private=True, no_store=True)
    return response


def can_read(view: Callable[..., Any]) -> Callable[..., Any]:
    """GET only; a staff user with the view permission on task results, or the API token (fleet data only)."""

    @require_GET
    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if has_token(request):
            return private(view(request, *args, **kwargs))
        return private(_staff_problem(request, VIEW_PERMISSION) or view(request, *args, **kwargs))

    return guarded


def can_read_tasks(view: Callable[..., Any]) -> Callable[..., Any]:
    """GET only; task data (arguments, results, tracebacks): a staff session with the view permission.

    The API token is refused here with a 403 saying what it may read.
    """

    @require_GET
    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        user = getattr(request, "user", None)
        if (user is None or not user.is_authenticated) and has_token(request):
            return private(refusal(403, "API_TOKEN reads metrics, workers and queues only; task data needs a "
                                        f"staff session with the permission {VIEW_PERMISSION}"))
        return private(_staff_problem(request, VIEW_PERMISSION) or view(request, *args, **kwargs))

    return guarded


def can_act(permission: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """POST only, CSRF-checked, from a staff session holding ``permission`` (a token is not enough)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @require_POST
        @csrf_protect
        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return private(_staff_problem(request, permission) or view(request, *args, **kwargs))

        return guarded

    return decorate
