"""Task states, as Celery names them, so results read the same on both sides."""

from django.db import models


class TaskState(models.TextChoices):
    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


#: A result in one of these states will not change any more.
READY_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})
#: ``get(propagate=True)`` raises for these.
PROPAGATE_STATES = frozenset({TaskState.FAILURE, TaskState.REVOKED})
#: The stored result of these is an exception description.
EXCEPTION_STATES = frozenset({TaskState.FAILURE, TaskState.RETRY, TaskState.REVOKED})
