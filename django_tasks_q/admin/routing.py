"""Admin for routing: ``Queue`` declarations, ``TaskRoute`` rules and a "where does task X go?" preview.

Routes list in the order they are tried, each with the registered task names
its pattern matches in this web process. The preview (a page beside the
route list, ``?task=NAME``) runs :func:`django_tasks_q.core.routing.explain`
for one name, registered or typed, and shows every rule in precedence order,
which matched and which decided the queue. The forms validate through the
models' ``clean()``; rows reach other processes through the route table's
one-second cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from ..core import routing
from ..core.registry import registry
from ..models import Queue, TaskRoute

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

SHOWN_MATCHES = 3


class _RoutesCount(TypedDict):
    """What ``QueueAdmin.get_queryset()`` annotates each row with."""

    routes_count: int


def matched_names(pattern: str) -> list[str]:
    """Registered task names (in this process) that ``pattern`` matches."""
    return [name for name in registry.names() if routing.matches(pattern, name)]


def declared_options(task_name: str) -> dict | None:
    """The routing options a registered task declares, as ``explain(task=...)`` takes them."""
    task = registry.get(task_name)
    if task is None:
        return None
    return {"queue": task.options.queue, "routing_key": task.options.routing_key,
            "priority": task.options.priority}


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin):
    list_display = ("name", "exchange_display", "exchange_type", "routing_key_display", "max_priority", "durable",
                    "routes_count")
    list_filter = ("exchange_type", "durable")
    search_fields = ("name", "exchange", "routing_key", "description")
    fieldsets = (
        (None, {"fields": ("name", "description")}),
        ("Exchange", {"fields": ("exchange", "exchange_type", "routing_key")}),
        ("Declaration", {"fields": ("max_priority", "durable")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(routes_count=Count("routes"))

    @admin.display(description="exchange", ordering="exchange")
    def exchange_display(self, obj: Queue) -> str:
        return obj.exchange or format_html("<span title='named like the queue'>{}</span>", obj.name)

    @admin.display(description="routing key", ordering="routing_key")
    def routing_key_display(self, obj: Queue) -> str:
        return obj.routing_key or format_html("<span title='the queue name'>{}</span>", obj.name)

    @admin.display(description="routes", ordering="routes_count")
    def routes_count(self, obj: WithAnnotations[Queue, _RoutesCount]) -> int:
        return obj.routes_count


@admin.register(TaskRoute)
class TaskRouteAdmin(admin.ModelAdmin):
    list_display = ("order", "pattern", "queue", "routing_key", "priority", "enabled", "matched_tasks")
    list_display_links = ("pattern",)
    list_editable = ("order", "enabled")
    list_filter = ("enabled", "queue")
    list_select_related = ("queue",)
    search_fields = ("pattern", "description", "queue__name")
    ordering = ("order", "id")
    actions = ("enable", "disable")
    readonly_fields = ("matched_tasks_full",)
    fieldsets = (
        (None, {"fields": ("pattern", "matched_tasks_full", "queue", "order", "enabled", "description")}),
        ("Overrides", {"fields": ("routing_key", "priority")}),
    )

    @admin.display(description="matches")
    def matched_tasks(self, obj: TaskRoute) -> str:
        names = matched_names(obj.pattern)
        if not names:
            return "no registered task"
        shown = ", ".join(names[:SHOWN_MATCHES])
        more = f" … ({len(names)} tasks)" if len(names) > SHOWN_MATCHES else ""
        return shown + more

    @admin.display(description="registered tasks matched")
    def matched_tasks_full(self, obj: TaskRoute | None) -> str:
        if obj is None or not obj.pattern:
            return "-"
        return ", ".join(matched_names(obj.pattern)) or "none in this web process (workers may have more)"

    @admin.action(description="Enable selected routes", permissions=["change"])
    def enable(self, request, queryset) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"enabled {count} route(s)", messages.SUCCESS)

    @admin.action(description="Disable selected routes", permissions=["change"])
    def disable(self, request, queryset) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"disabled {count} route(s)", messages.SUCCESS)

    # -- "where does task X go?" ---------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        preview = path("preview/", self.admin_site.admin_view(self.preview_view), name="%s_%s_preview" % info)
        return [preview, *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), **self._preview_form_context()})

    def _preview_form_context(self, task_name: str = "") -> dict:
        info = self.opts.app_label, self.opts.model_name
        return {"preview_url": reverse("admin:%s_%s_preview" % info, current_app=self.admin_site.name),
                "preview_task": task_name, "registered_names": registry.names()}

    def preview_view(self, request):
        """Every rule ``explain()`` tried for ``?task=NAME``, the deciding one highlighted."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        task_name = request.GET.get("task", "").strip()[:200]
        declared = steps = route = None
        if task_name:
            declared = declared_options(task_name)
            routing.route_table().reload()  # show edits made a moment ago, not the cached table
            steps = routing.explain(task_name, task=declared)
            route = routing.resolve(task_name, call={}, task=declared or {})
        context = {
            **self.admin_site.each_context(request),
            **self._preview_form_context(task_name),
            "opts": self.opts,
            "title": f"Where does {task_name} go?" if task_name else "Where does a task go?",
            "task_name": task_name,
            "registered": declared is not None,
            "declared": {k: v for k, v in (declared or {}).items() if v is not None},
            "steps": steps,
            "route": route,
            "decided": next((step for step in steps or () if step.decided), None),
        }
        return TemplateResponse(request, "admin/django_tasks_q/taskroute/preview.html", context)
