"""The monitoring dashboard: an admin page drawn by a small script from one JSON request per refresh.

It hangs off the ``Dashboard`` proxy model, so it appears in the admin
index under whatever ``AdminSite`` registers this app. The page itself is a
frame; ``static/django_tasks_q/dashboard.js`` fetches ``api/dashboard/``
every few seconds and redraws workers, queues, charts, progress bars and
failures without reloading. The JSON API (``web/api.py``) is mounted under
the page's own URL, so the dashboard works whether or not the project
includes ``django_tasks_q.urls``; it is guarded as everywhere else (staff
with the view permission to read; CSRF and the model permission to act).
The page sends ``X-Frame-Options: DENY`` itself, whether or not the project
runs ``XFrameOptionsMiddleware``: its buttons revoke, retry and purge, so no
other page may frame it and steer a click.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import include, path

from ..models import Dashboard
from ..web import api
from ..web.access import VIEW_PERMISSION

#: seconds between refreshes of the page's data
REFRESH_SECONDS = 2


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(VIEW_PERMISSION)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_urls(self):
        return [path("api/", include((api.urlpatterns(), "tasks_q_dashboard")))] + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Task dashboard",
            "opts": self.model._meta,
            "api_base": request.path + "api/",
            "refresh_seconds": REFRESH_SECONDS,
            "can_act_on_tasks": request.user.has_perm(api.ACT_ON_TASKS),
            "can_purge": request.user.has_perm(api.ACT_ON_QUEUES),
            **(extra_context or {}),
        }
        response = TemplateResponse(request, "admin/django_tasks_q/dashboard.html", context)
        response["X-Frame-Options"] = "DENY"
        return response


__all__ = ["DashboardAdmin"]
