"""Log set-up for worker, beat and events processes: ``-l LEVEL`` applies to django_tasks_q's loggers.

Django's ``LOGGING`` stays in charge: a handler it gave ``django_tasks_q`` (or
the root logger) is used as is, and only the level is set. Without one, a
stream handler with :class:`~django_tasks_q.log.TaskFormatter` goes on the
``django_tasks_q`` logger -- never on the root logger, so the site's own
logging is left alone -- unless ``TASKS_Q["WORKER_HIJACK_ROOT_LOGGER"]`` asks
for Celery's behaviour: the root logger then gets that handler and level,
replacing its handlers, so every library's records go to the worker's log.
"""

from __future__ import annotations

import logging

from django.core.management.base import CommandError

from ..conf import settings
from ..log import TaskFormatter


def configure_logging(level: str) -> None:
    numeric = logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise CommandError(f"-l/--loglevel {level!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")
    ours = logging.getLogger("django_tasks_q")
    ours.setLevel(numeric)
    if settings.WORKER_HIJACK_ROOT_LOGGER:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_handler())
        root.setLevel(numeric)
    elif not ours.handlers and not logging.getLogger().handlers:
        ours.addHandler(_handler())


def _handler() -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(TaskFormatter())
    return handler
