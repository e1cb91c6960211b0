"""django-tasks-q: background tasks for Django, speaking Celery's protocol.

Public API (docs/tasks.md, calling.md, results.md)::

    from django_tasks_q import task, Task, send_task, AsyncResult, registry
"""

#: The one place the version is written: setup.cfg reads it, the worker banner and events report it.
__version__ = "0.1.0"

from .beat.crontab import crontab
from .core.calling import send_task
from .core.canvas import Signature, chain, signature
from .core.groups import chord, group
from .core.registry import registry
from .core.states import TaskState
from .core.task import Task, shared_task, task
from .results.async_result import AsyncResult, EagerResult
from .results.group_result import GroupResult

__all__ = ["AsyncResult", "EagerResult", "GroupResult", "Signature", "Task", "TaskState", "chain", "chord", "crontab",
           "group", "registry", "send_task", "shared_task", "signature", "task"]
