"""``TaskResult``: one row per task id, written by the ORM result backend."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from ..core.states import TaskState


class TaskResult(models.Model):
    """The state and outcome of one task, as recorded by workers.

    ``result`` holds the return value (SUCCESS), the ``meta`` of a custom
    state such as PROGRESS, or for FAILURE/RETRY/REVOKED an exception
    description ``{"exc_type", "exc_message", "exc_module"}`` as Celery
    stores it, so the caller can re-raise the same exception type.
    """

    task_id = models.CharField("task id", max_length=255, unique=True)
    task_name = models.CharField("task name", max_length=255, blank=True, db_index=True)
    state = models.CharField(max_length=50, choices=TaskState.choices, default=TaskState.PENDING, db_index=True)
    args = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    kwargs = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    result = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    traceback = models.TextField(blank=True)
    worker = models.CharField(max_length=255, blank=True, db_index=True)
    queue = models.CharField(max_length=255, blank=True, db_index=True)
    retries = models.PositiveIntegerField(default=0)
    parent_id = models.CharField(max_length=255, blank=True)
    root_id = models.CharField(max_length=255, blank=True)
    group_id = models.CharField(max_length=255, blank=True, db_index=True)
    date_created = models.DateTimeField(auto_now_add=True)
    date_received = models.DateTimeField(null=True, blank=True)
    date_started = models.DateTimeField(null=True, blank=True)
    date_done = models.DateTimeField(null=True, blank=True, db_index=True)
    runtime = models.FloatField(null=True, blank=True, help_text="seconds the task ran")

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "task result"
        ordering = ["-date_created"]
        indexes = [models.Index(fields=["state", "date_done"], name="tasks_q_result_state_done")]

    def __str__(self) -> str:
        return f"{self.task_name or 'task'} [{self.task_id}] {self.state}"
