"""Read-only admin for ``TaskResult``: workers write results, staff read them."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from ..models import TaskResult


def _pretty(value) -> str:
    return format_html("<pre style='margin:0;white-space:pre-wrap'>{}</pre>",
                       json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))


@admin.register(TaskResult)
class TaskResultAdmin(admin.ModelAdmin):
    list_display = ("task_id", "task_name", "state", "retries", "worker", "queue", "date_done", "runtime_display")
    list_filter = ("state", "task_name", "queue", "worker", "date_done")
    search_fields = ("task_id", "task_name")
    date_hierarchy = "date_created"
    readonly_fields = ("task_id", "task_name", "state", "worker", "queue", "retries", "parent_id", "root_id",
                       "group_id", "date_created", "date_received", "date_started", "date_done", "runtime_display",
                       "args_display", "kwargs_display", "result_display", "traceback_display")
    fieldsets = (
        (None, {"fields": ("task_id", "task_name", "state", "worker", "queue", "retries")}),
        ("Call", {"fields": ("args_display", "kwargs_display")}),
        ("Outcome", {"fields": ("result_display", "traceback_display")}),
        ("Times", {"fields": ("date_created", "date_received", "date_started", "date_done", "runtime_display")}),
        ("Family", {"fields": ("parent_id", "root_id", "group_id"), "classes": ("collapse",)}),
    )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="runtime", ordering="runtime")
    def runtime_display(self, obj: TaskResult) -> str:
        return "" if obj.runtime is None else f"{obj.runtime:.3f}s"

    @admin.display(description="args")
    def args_display(self, obj: TaskResult) -> str:
        return _pretty(obj.args)

    @admin.display(description="kwargs")
    def kwargs_display(self, obj: TaskResult) -> str:
        return _pretty(obj.kwargs)

    @admin.display(description="result")
    def result_display(self, obj: TaskResult) -> str:
        return _pretty(obj.result)

    @admin.display(description="traceback")
    def traceback_display(self, obj: TaskResult) -> str:
        return format_html("<pre style='margin:0'>{}</pre>", obj.traceback) if obj.traceback else "-"
