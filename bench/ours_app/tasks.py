"""Ours' ``incr`` task (autodiscovered as this app's ``tasks`` module); Celery's has the same name."""

from bench import counter
from django_tasks_q import task


@task(name="bench.ours_app.tasks.incr")
def incr():
    return counter.incr()
