"""``Dashboard``: no table of its own, only the admin's entry for the monitoring page.

A proxy of ``TaskResult`` so the page sits in the admin index beside the
models, under whatever ``AdminSite`` the project uses, with no URL
patching. It creates no permissions: seeing the dashboard needs the view
permission on task results (``admin/dashboard.py``).
"""

from __future__ import annotations

from .results import TaskResult


class Dashboard(TaskResult):
    class Meta:
        proxy = True
        app_label = "django_tasks_q"
        verbose_name = verbose_name_plural = "dashboard"
        default_permissions = ()
