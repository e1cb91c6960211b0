"""Read-only admin for ``Worker`` rows: what each worker last said about itself.

Workers write these rows (start, every heartbeat, clean stop); staff read
them. Online or offline is derived from the heartbeat's age, so a worker
that was killed shows as offline rather than disappearing. Deleting a row
of a worker that is gone for good is allowed; a running worker writes its
row again at its next heartbeat.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet

from ..models import Worker


class OnlineFilter(admin.SimpleListFilter):
    """Online: beating within three of its own intervals and not stopped (``Worker.is_online``)."""

    title = "status"
    parameter_name = "online"

    def lookups(self, request, model_admin):
        return (("yes", "online"), ("no", "offline"))

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() not in ("yes", "no"):
            return queryset
        # each row's own heartbeat interval decides, so ask the model (rows are few: one per worker)
        online_ids = [w.pk for w in queryset.filter(stopped_at__isnull=True, last_heartbeat__isnull=False)
                      if w.is_online()]
        return queryset.filter(pk__in=online_ids) if self.value() == "yes" else queryset.exclude(pk__in=online_ids)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("hostname", "online", "pool", "concurrency", "queues_display", "processed", "failed", "active",
                    "load_display", "last_heartbeat", "problem_display")
    list_filter = (OnlineFilter, "pool")
    search_fields = ("hostname",)
    readonly_fields = ("hostname", "online", "pid", "queues_display", "pool", "concurrency", "version", "broker",
                       "started_at", "last_heartbeat", "heartbeat_interval", "last_progress_at", "stopped_at",
                       "processed", "failed", "active", "load_display", "problem")
    fields = readonly_fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(boolean=True, description="online")
    def online(self, obj: Worker) -> bool:
        return obj.is_online()

    @admin.display(description="queues")
    def queues_display(self, obj: Worker) -> str:
        return ", ".join(obj.queues or [])

    @admin.display(description="load (1, 5, 15 min)")
    def load_display(self, obj: Worker) -> str:
        return " ".join(f"{value:.2f}" for value in obj.load or [])

    @admin.display(description="problem")
    def problem_display(self, obj: Worker) -> str:
        return obj.problem or "-"


__all__ = ["OnlineFilter", "WorkerAdmin"]
