"""State that steers workers and must outlive them: revocations and rate-limit slots."""

from __future__ import annotations

from django.db import models


class Revocation(models.Model):
    """A task id that must not run, stored so that a restart of every worker forgets nothing.

    Written by ``AsyncResult.revoke()`` and ``manage.py taskcontrol revoke``;
    workers load the live rows at start and poll for new ones, so a revoked
    task that is queued, delayed or reserved is dropped when it reaches a
    worker. ``terminate`` also stops the task if it is running. Rows are
    pruned after ``expires_at`` (``REVOKE_EXPIRES`` after they were made).
    """

    task_id = models.CharField("task id", max_length=255, primary_key=True)
    terminate = models.BooleanField(default=False, help_text="also stop the task if it is running")
    signal = models.CharField(max_length=20, default="SIGTERM", help_text="signal a prefork child is stopped with")
    reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    expires_at = models.DateTimeField(db_index=True, help_text="the row is pruned after this time")

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "revocation"

    def __str__(self) -> str:
        return f"revoked {self.task_id}{' (terminate)' if self.terminate else ''}"


class RateLimitBucket(models.Model):
    """The next free start slot of a rate-limited task, shared by every worker.

    ``next_slot_at`` is a theoretical arrival time (GCRA): a worker reserves
    the slot ``max(next_slot_at, now)`` and moves it on by one interval
    (1/rate seconds) in one compare-and-set, so ``rate_limit="10/s"`` holds
    across the whole fleet, not per worker.
    """

    key = models.CharField(max_length=255, primary_key=True, help_text="the task name")
    next_slot_at = models.FloatField(default=0.0, help_text="epoch seconds")

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "rate-limit bucket"

    def __str__(self) -> str:
        return f"{self.key}: next slot at {self.next_slot_at:.3f}"
