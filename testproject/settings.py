"""Settings of the demo site and of the test suite.

Everything a test needs to vary comes from the environment so that worker
subprocesses started with ``manage.py taskworker`` see the same settings as
the test that started them:

- ``TASKS_Q_BROKER_URL`` / ``TASKS_Q_RESULT_BACKEND``: read by django_tasks_q.conf
- ``TESTPROJECT_DATABASE_URL``: ``postgres://user@host:port/name`` for PostgreSQL,
  otherwise SQLite at ``TESTPROJECT_SQLITE`` (default ``db.sqlite3`` beside manage.py);
  the test suite's SQLite database is a temp file that tests hand to workers
  through ``TESTPROJECT_SQLITE``.
"""

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "testproject-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_q",
    "django_tasks",
    "testproject.videos",
    "testproject.reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def _database() -> dict:
    url = os.environ.get("TESTPROJECT_DATABASE_URL")
    if url:
        parts = urlsplit(url)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/") or "postgres",
            "USER": parts.username or "postgres",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "127.0.0.1",
            "PORT": str(parts.port or 5432),
            "TEST": {"NAME": parts.path.lstrip("/") or "postgres"},
        }
    path = os.environ.get("TESTPROJECT_SQLITE", str(BASE_DIR / "db.sqlite3"))
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        # WAL lets the worker read while the web process writes; IMMEDIATE
        # transactions take the write lock up front instead of failing later.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # A file, not :memory:, so worker subprocesses started by tests share it.
        "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"tasksq-test-{os.getpid()}.sqlite3")},
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# Django's task framework (django-tasks on Django 5.2) sends through django-tasks-q
TASKS = {"default": {"BACKEND": "django_tasks_q.backends.TaskQBackend", "QUEUES": ["default", "videos"]}}

TASKS_Q = {
    "QUEUES": {"videos": {"max_priority": 10}, "reports": {}},
}

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"()": "django_tasks_q.log.TaskFormatter"},
                   "ids": {"format": "%(levelname)s %(task_name)s %(task_id)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"django_tasks_q": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
if os.environ.get("TESTPROJECT_TASK_LOG"):  # the logging test: task records also go to this file
    LOGGING["handlers"]["task_file"] = {"class": "logging.FileHandler", "formatter": "ids",
                                        "filename": os.environ["TESTPROJECT_TASK_LOG"]}
    LOGGING["loggers"]["django_tasks_q.task"] = {"handlers": ["task_file", "console"], "level": "INFO",
                                                 "propagate": False}
