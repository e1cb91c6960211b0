"""Settings for the ``pgresults`` row's Celery peer: the testproject's, plus django-celery-results.

Celery stores its results through django-celery-results in the same
PostgreSQL database as ours (``TESTPROJECT_DATABASE_URL``), so the two result
backends write to one server. Used by the bench only: the testproject itself
does not know django-celery-results.
"""

from testproject.settings import *  # noqa: F401,F403
from testproject.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_results"]
