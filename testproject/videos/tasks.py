"""Video tasks of the demo site, in the shapes the seeds use."""

import time

from django_tasks_q import Task, task


@task
def add(x, y):
    return x + y


@task(bind=True, queue="videos", acks_late=True)
def compress(self, video_id, steps=3, delay=0.0):
    """Pretend to compress a video, reporting PROGRESS as it goes."""
    for step in range(steps):
        self.update_state(state="PROGRESS", meta={"current": step + 1, "total": steps})
        time.sleep(delay)
    return {"video_id": video_id, "compressed": True, "worker": self.request.hostname}


@task
def fail(message="boom"):
    raise ValueError(message)


@task
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@task
def noop():
    return None


@task
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@task(bind=True)
def whoami(self):
    r = self.request
    return {"id": r.id, "retries": r.retries, "queue": r.delivery_info.get("queue"), "hostname": r.hostname,
            "eta": r.eta.isoformat() if r.eta else None}


@task(bind=True, max_retries=2, default_retry_delay=0)
def flaky(self, succeed_on_attempt):
    if self.request.retries + 1 < succeed_on_attempt:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries + 1} failed"), countdown=0)
    return self.request.retries


class Audited(Task):
    """A base class whose hooks write to a file, so tests can see they ran in the worker."""

    def _log(self, line):
        import os

        path = os.environ.get("TESTPROJECT_HOOK_LOG")
        if path:
            with open(path, "a") as fh:
                fh.write(line + "\n")

    def on_success(self, retval, task_id, args, kwargs):
        self._log(f"success {task_id} {retval}")

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self._log(f"failure {task_id} {type(exc).__name__}")

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        self._log(f"after_return {task_id} {status}")


@task(base=Audited, name="videos.audited")
def audited(x):
    if x < 0:
        raise ValueError("negative")
    return x * 2


@task
def unjsonable():
    return object()


@task
def write_row(note):
    """Touches the database from inside a task."""
    from django.contrib.auth.models import Group

    return Group.objects.create(name=note).pk


@task(ignore_result=True)
def touch(path):
    """Create ``path``: the benchmarks' end-of-run marker."""
    with open(path, "w") as fh:
        fh.write("done")
