"""Settings for ``bench/beat_scale.py``: the testproject's, plus django-celery-beat, so that both schedulers'
tables live in one database and are measured in the same run."""

from testproject.settings import *  # noqa: F401,F403
from testproject.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_beat"]
