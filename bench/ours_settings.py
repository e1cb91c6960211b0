"""Settings for ours in the ``prefork2`` row: the testproject's, plus the bench-only app with the ``incr`` task.

Everything else (database, broker and result backend from the environment,
logging) is the testproject's.
"""

from testproject.settings import *  # noqa: F401,F403
from testproject.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.ours_app"]
