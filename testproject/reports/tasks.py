"""Report tasks of the demo site."""

import datetime

from django_tasks_q import task


@task(name="reports.build", queue="reports")
def build_report(day):
    return {"day": day, "rows": len(day) * 7, "built_at": datetime.datetime.now(datetime.UTC).isoformat()}


@task(bind=True)
def count_users(self):
    from django.contrib.auth.models import User

    return User.objects.count()
