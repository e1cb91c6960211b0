"""Read-only admin for ``TaskResult``: workers write results, staff read them.

Two actions act on tasks, not on the rows: *run again* sends each selected
task anew by name with its stored arguments (a new task id), and *revoke*
stores a revoke for each (as ``taskcontrol revoke``). Both need the change
permission on task results, and POST with CSRF like every admin action.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.utils.html import format_html

from ..models import TaskResult
from ..web.actions import revoke, send_again


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

    actions = ("run_again", "revoke")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # rows are the workers' record: nobody edits them

    def has_act_permission(self, request) -> bool:
        """Acting on the tasks (run again, revoke) needs the model's change permission."""
        return request.user.has_perm("django_tasks_q.change_taskresult")

    @admin.action(description="Run the selected tasks again (same arguments, new id)", permissions=["act"])
    def run_again(self, request, queryset) -> None:
        sent, skipped = [], []
        for row in queryset:
            result = send_again(row)
            if result is None:
                skipped.append(row.task_id)
            else:
                sent.append(f"{row.task_name}[{result.id}]")
        if sent:
            self.message_user(request, f"sent {len(sent)} task(s) again: {', '.join(sent)}", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"not sent (no task name recorded): {', '.join(skipped)}", messages.WARNING)

    @admin.action(description="Revoke the selected tasks", permissions=["act"])
    def revoke(self, request, queryset) -> None:
        ids = list(queryset.values_list("task_id", flat=True))
        revoke(ids, who=f"admin: {request.user}")
        self.message_user(request, f"revoked {len(ids)} task(s); running workers see it within about a second",
                          messages.SUCCESS)

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
