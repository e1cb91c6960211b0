"""Routing that staff edit in the admin: ``Queue`` declarations and ``TaskRoute`` rules.

Both merge with ``TASKS_Q["QUEUES"]`` / ``["ROUTES"]``; rows win over settings
for the same queue name. Resolution lives in :mod:`django_tasks_q.core.routing`.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")
PATTERN = re.compile(r"^[A-Za-z0-9_.:\-*?\[\]!]+$")


class Queue(models.Model):
    class ExchangeType(models.TextChoices):
        DIRECT = "direct"
        TOPIC = "topic"
        FANOUT = "fanout"

    name = models.CharField(max_length=200, unique=True, help_text="what workers consume: taskworker -Q NAME")
    exchange = models.CharField(max_length=200, blank=True, help_text="empty: an exchange named like the queue")
    exchange_type = models.CharField(max_length=10, choices=ExchangeType.choices, default=ExchangeType.DIRECT)
    routing_key = models.CharField(max_length=200, blank=True,
                                   help_text="binding key; empty: the queue's name. Topic: media.* or media.#")
    max_priority = models.PositiveSmallIntegerField(null=True, blank=True,
                                                    help_text="enable priorities 0..N (RabbitMQ x-max-priority)")
    durable = models.BooleanField(default=True)
    description = models.TextField(blank=True)

    class Meta:
        app_label = "django_tasks_q"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(max_priority__isnull=True) | Q(max_priority__gte=1,
                                                                                max_priority__lte=255),
                                   name="tasks_q_queue_max_priority"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if self.name and not NAME.match(self.name):
            errors["name"] = "letters, digits and _ . : - only"
        if self.exchange and not NAME.match(self.exchange):
            errors["exchange"] = "letters, digits and _ . : - only"
        if self.routing_key and self.exchange_type != self.ExchangeType.TOPIC and any(c in self.routing_key
                                                                                      for c in "*#"):
            errors["routing_key"] = "* and # are wildcards of topic exchanges; this exchange is " + self.exchange_type
        if errors:
            raise ValidationError(errors)

    def as_spec(self) -> dict:
        """The ``TASKS_Q["QUEUES"]`` shape of this row."""
        spec = {"exchange": self.exchange or self.name, "exchange_type": self.exchange_type,
                "routing_key": self.routing_key or self.name, "durable": self.durable}
        if self.max_priority:
            spec["max_priority"] = self.max_priority
        return spec


class TaskRoute(models.Model):
    """Send tasks whose name matches ``pattern`` to ``queue``; the lowest ``order`` that matches wins."""

    pattern = models.CharField(max_length=200, help_text="exact task name, or a glob such as videos.*")
    queue = models.ForeignKey(Queue, on_delete=models.PROTECT, related_name="routes")
    routing_key = models.CharField(max_length=200, blank=True, help_text="empty: the queue's routing key")
    priority = models.PositiveSmallIntegerField(null=True, blank=True, help_text="0-255, higher runs first")
    order = models.PositiveIntegerField(default=0, help_text="rules are tried from the lowest order up")
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)

    class Meta:
        app_label = "django_tasks_q"
        ordering = ["order", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(priority__isnull=True) | Q(priority__lte=255),
                                   name="tasks_q_route_priority"),
        ]

    def __str__(self) -> str:
        return f"{self.pattern} -> {self.queue_id and self.queue.name}"

    def clean(self) -> None:
        if self.pattern and not PATTERN.match(self.pattern):
            raise ValidationError({"pattern": "a task name or glob: letters, digits, _ . : - and * ? [ ] !"})
        if self.pattern and self.pattern.count("[") != self.pattern.count("]"):
            raise ValidationError({"pattern": "unbalanced [ ] in the glob"})
