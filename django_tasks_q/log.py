"""Task loggers: ``get_task_logger(__name__)`` and the id and name of the running task in every record.

::

    from django_tasks_q.log import get_task_logger

    logger = get_task_logger(__name__)

    @task
    def resize(video_id):
        logger.info("resizing %s", video_id)   # ... testproject.videos.tasks.resize[3f2a...]: resizing 7

The logger is ``django_tasks_q.task.<name>``, so it follows whatever Django's
``LOGGING`` says about ``django_tasks_q`` (or ``django_tasks_q.task``).
Each record it emits carries ``task_id`` and ``task_name`` attributes (``???``
outside a task), so any formatter can show them with ``%(task_id)s`` and
``%(task_name)s``; :class:`TaskFormatter` puts them in front of the message.
"""

from __future__ import annotations

import logging

from .core import context

#: parent of every task logger
TASK_LOGGER = "django_tasks_q.task"
FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
TASK_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
UNKNOWN = "???"


class TaskContextFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` of the task running in this thread (or coroutine) to a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = context.current()
        record.task_id = request.id or UNKNOWN
        record.task_name = request.task or UNKNOWN
        return True


_context = TaskContextFilter()


def get_task_logger(name: str) -> logging.Logger:
    """The logger ``django_tasks_q.task.<name>``, whose records name the running task."""
    logger = logging.getLogger(name if name.startswith(TASK_LOGGER + ".") else f"{TASK_LOGGER}.{name}")
    if _context not in logger.filters:
        logger.addFilter(_context)
    return logger


class TaskFormatter(logging.Formatter):
    """``TASK_FORMAT`` for records from a task logger, ``FORMAT`` for the rest.

    Usable from ``LOGGING``: ``"formatters": {"tasks": {"()": "django_tasks_q.log.TaskFormatter"}}``.
    """

    def __init__(self, fmt: str | None = None, task_fmt: str | None = None, **kwargs) -> None:
        super().__init__(fmt or FORMAT, **kwargs)
        self._task = logging.Formatter(task_fmt or TASK_FORMAT, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "task_id", None) is not None:
            return self._task.format(record)
        return super().format(record)


__all__ = ["TASK_FORMAT", "TaskContextFilter", "TaskFormatter", "get_task_logger"]
