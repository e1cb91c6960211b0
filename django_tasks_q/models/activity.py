"""Monitoring data that ``manage.py taskevents`` records from workers' events.

``TaskEvent``: the raw events, one row each, kept for a short while (pruned
by ``EVENTS_KEEP_SECONDS`` and ``EVENTS_KEEP_ROWS``) so staff can look at
what just happened. ``TaskActivity``: per-minute counts per task name, the
numbers the dashboard's charts read, kept for ``ACTIVITY_KEEP_DAYS``. Both
are written in batches by :mod:`django_tasks_q.eventstore`; neither grows
without bound.
"""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class TaskEvent(models.Model):
    """One Celery-format event as a worker published it.

    ``event`` is the event type (``task-succeeded``, ``worker-online``
    ...); ``timestamp`` is when the worker made it (its clock). ``state`` is
    the task state the event implies (``SUCCESS`` for ``task-succeeded``),
    blank for worker events. ``task_name`` is filled in from the task's
    ``task-received`` event when a later event does not carry it. ``data``
    is the whole event.
    """

    id = models.BigAutoField(primary_key=True)  # insertion order: the count limit prunes the lowest ids
    event = models.CharField("event type", max_length=40)
    task_id = models.CharField("task id", max_length=255, blank=True, db_index=True)
    task_name = models.CharField("task name", max_length=255, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    timestamp = models.DateTimeField(db_index=True, help_text="when the worker made the event")
    state = models.CharField(max_length=20, blank=True)
    runtime = models.FloatField(null=True, blank=True, help_text="seconds the task ran (task-succeeded)")
    exception = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    data = models.JSONField(default=dict, encoder=DjangoJSONEncoder, help_text="the whole event")

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "task event"
        ordering = ["-timestamp", "-id"]

    def __str__(self) -> str:
        subject = f"{self.task_name or 'task'}[{self.task_id}]" if self.task_id else self.hostname
        return f"{self.event} {subject}"


class TaskActivity(models.Model):
    """What happened to one task name in one minute (UTC, by the events' timestamps)."""

    minute = models.DateTimeField(help_text="start of the minute")
    task_name = models.CharField("task name", max_length=255, blank=True)
    received = models.PositiveIntegerField(default=0)
    started = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    retried = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    revoked = models.PositiveIntegerField(default=0)
    runtime_total = models.FloatField(default=0.0, help_text="seconds, summed over the succeeded tasks")
    runtime_max = models.FloatField(default=0.0, help_text="seconds, the longest succeeded task")

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "task activity"
        verbose_name_plural = "task activity"
        ordering = ["-minute", "task_name"]
        constraints = [
            # Its index, minute first, also serves the charts' range reads and the pruning.
            models.UniqueConstraint(fields=["minute", "task_name"], name="tasks_q_activity_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name or 'unknown task'} at {self.minute:%Y-%m-%d %H:%M}"
