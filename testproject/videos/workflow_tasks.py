"""Tasks for the workflow (canvas) tests: errbacks and callbacks that leave evidence in a file."""

import json

from django_tasks_q import task


@task
def record_errback(request, exc, traceback, path):
    """A new-style errback: called in the worker with the failed task's request, exception and traceback."""
    with open(path, "w") as fh:
        json.dump({"id": request.id, "task": request.task, "args": list(request.args),
                   "exc": f"{type(exc).__name__}: {exc}", "traceback": traceback}, fh)
    return "recorded"


@task
def record_value(value, path):
    """A callback (or old-style errback): writes what it was given first to ``path``."""
    with open(path, "a") as fh:
        fh.write(json.dumps(value) + "\n")
    return value


@task
def record_id(task_id, *, path):
    """An old-style errback (one positional parameter): sent as a message with the failed task's id."""
    with open(path, "w") as fh:
        fh.write(json.dumps(task_id))
    return task_id
