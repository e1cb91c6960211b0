"""Rows behind groups and chords: saved group results and chord counters."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class GroupResultMeta(models.Model):
    """The ordered member task ids of a saved ``GroupResult`` (``save()`` / ``restore()``)."""

    group_id = models.CharField("group id", max_length=255, unique=True)
    result_ids = models.JSONField(default=list, blank=True)
    date_done = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "group result"

    def __str__(self) -> str:
        return f"group [{self.group_id}] ({len(self.result_ids)} tasks)"


class ChordCounter(models.Model):
    """How many members of a chord's header have finished, and what to run when all have.

    Workers increment ``done`` with one ``UPDATE ... SET done = done + 1``
    and read the new value in the same transaction: exactly one of them
    sees ``done == total`` and sends ``body``. The first member to fail flips
    ``failed`` with a conditional UPDATE, so the chord fails exactly once.
    """

    group_id = models.CharField("group id", max_length=255, unique=True)
    total = models.PositiveIntegerField()
    done = models.PositiveIntegerField(default=0)
    failed = models.BooleanField(default=False)
    result_ids = models.JSONField(default=list, blank=True, help_text="member task ids in header order")
    body = models.JSONField(encoder=DjangoJSONEncoder, help_text="the body signature as a dict")
    date_created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        app_label = "django_tasks_q"
        verbose_name = "chord counter"

    def __str__(self) -> str:
        return f"chord [{self.group_id}] {self.done}/{self.total}"
