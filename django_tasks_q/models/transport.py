"""Placeholder: the django:// transport's message table (being written)."""
from django.db import models


class BrokerMessage(models.Model):
    queue = models.CharField(max_length=200, db_index=True)
    payload = models.TextField()

    class Meta:
        app_label = "django_tasks_q"
