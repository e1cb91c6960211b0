"""``Worker``: one row per worker hostname, kept current by its heartbeats."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone


class Worker(models.Model):
    """What a ``taskworker`` process last said about itself.

    Written at start, every ``WORKER_HEARTBEAT`` seconds and at a clean stop.
    A worker that stopped beating (killed, frozen, host gone) is *offline*:
    the row stays so the admin and ``taskhealth`` can say so. ``problem`` is
    set by the worker's watchdog (e.g. "queues hold work but nothing was
    consumed for 60s") and cleared when it recovers.
    """

    hostname = models.CharField(max_length=255, unique=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    queues = models.JSONField(default=list, blank=True)
    pool = models.CharField(max_length=20, blank=True)
    concurrency = models.PositiveIntegerField(default=1)
    version = models.CharField(max_length=40, blank=True)
    broker = models.CharField(max_length=255, blank=True, help_text="the broker URL, password masked")
    started_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True, db_index=True)
    heartbeat_interval = models.FloatField(default=5.0, help_text="seconds between heartbeats")
    last_progress_at = models.DateTimeField(null=True, blank=True, help_text="last message received or finished")
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="set on a clean shutdown")
    processed = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    active = models.PositiveIntegerField(default=0, help_text="tasks running at the last heartbeat")
    load = models.JSONField(default=list, blank=True, help_text="1, 5 and 15 minute load averages of the host")
    problem = models.TextField(blank=True, help_text="what the watchdog found wrong, if anything")

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "worker"
        ordering = ["hostname"]

    def __str__(self) -> str:
        return f"{self.hostname} ({'online' if self.is_online() else 'offline'})"

    def is_online(self, now: datetime | None = None) -> bool:
        """Beating within three intervals and not stopped."""
        if self.stopped_at is not None or self.last_heartbeat is None:
            return False
        now = now or timezone.now()
        return now - self.last_heartbeat <= timedelta(seconds=3 * max(self.heartbeat_interval, 1.0))
