"""django-tasks-q: background tasks for Django, speaking Celery's protocol.

Public API (DESIGN §3-5)::

    from django_tasks_q import task, Task, send_task, AsyncResult, registry
"""

from .beat.crontab import crontab
from .core.calling import send_task
from .core.registry import registry
from .core.states import TaskState
from .core.task import Task, shared_task, task
from .results.async_result import AsyncResult, EagerResult

__all__ = ["AsyncResult", "EagerResult", "Task", "TaskState", "crontab", "registry", "send_task", "shared_task",
           "task"]
__version__ = "0.1.0"
