"""The monitoring JSON API and Prometheus metrics, for a project's urls.py::

    path("tasks/", include("django_tasks_q.urls")),

gives ``tasks/workers/``, ``tasks/queues/``, ``tasks/tasks/?state=&name=``,
``tasks/tasks/<id>/`` (and its ``retry/`` and ``revoke/`` POSTs),
``tasks/queues/<name>/purge/`` (POST), ``tasks/dashboard/`` and
``tasks/metrics``. See docs/monitoring.md.
"""

from .web.api import urlpatterns as _patterns

app_name = "tasks_q"
urlpatterns = _patterns()
