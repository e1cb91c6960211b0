"""Settings for Celery in a Django site (the ``rss`` row's ``celery-site``): the testproject's
``django.contrib`` apps (admin, auth, contenttypes, sessions, messages, staticfiles), nothing of ours.

The testproject's own apps and ``django_tasks_q`` are left out, so that no
part of our library is loaded into Celery's worker; its logging
configuration is replaced for the same reason (its formatter is ours).
"""

from testproject.settings import *  # noqa: F401,F403
from testproject.settings import INSTALLED_APPS

INSTALLED_APPS = [app for app in INSTALLED_APPS if app.startswith("django.contrib.")]
LOGGING = {"version": 1, "disable_existing_loggers": False}
