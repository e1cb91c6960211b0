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


# -- Django's task framework (django.tasks / the django-tasks package), run by TaskQBackend --------------

import asyncio  # noqa: E402
import os  # noqa: E402

from django.dispatch import receiver  # noqa: E402
from django_tasks import task as framework_task  # noqa: E402
from django_tasks.signals import task_finished, task_started  # noqa: E402


@framework_task
def summarise(numbers, scale=1):
    return {"total": sum(numbers) * scale}


@framework_task(takes_context=True)
def with_context(context, note):
    return {"attempt": context.attempt, "id": context.task_result.id, "note": note}


@framework_task
def framework_fail(message):
    raise LookupError(message)


@framework_task
async def nap_async(seconds):
    await asyncio.sleep(seconds)
    return seconds


@framework_task(queue_name="videos", priority=60)
def on_videos():
    return "videos"


@receiver(task_started)
@receiver(task_finished)
def _log_framework_signal(sender, task_result, **kwargs):
    """Tests read which framework signals the worker sent (TESTPROJECT_SIGNAL_LOG names the file)."""
    path = os.environ.get("TESTPROJECT_SIGNAL_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{sender.__name__} {task_result.id} {task_result.status}\n")
