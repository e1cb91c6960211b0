"""Log set-up for worker processes: ``-l LEVEL`` applies to django_tasks_q's loggers."""

from __future__ import annotations

import logging

from django.core.management.base import CommandError

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def configure_logging(level: str) -> None:
    numeric = logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise CommandError(f"-l/--loglevel {level!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")
    logger = logging.getLogger("django_tasks_q")
    logger.setLevel(numeric)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
