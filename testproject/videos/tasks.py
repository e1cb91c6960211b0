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


@task
def mark(path, note="ran"):
    """Append one line to ``path``: tests count the lines to see how often a task ran, and when."""
    with open(path, "a") as fh:
        fh.write(f"{note} {time.time():.3f}\n")
    return note


@task
def witness(path, payload=""):
    """Write ``len(payload)`` to ``path`` and return it: proof that a message ran, whatever its size."""
    with open(path, "w") as fh:
        fh.write(str(len(payload)))
    return len(payload)


@task(rate_limit="5/s")
def limited(path, note="ran"):
    """``mark`` at most five times a second across all workers: the rate-limit tests read its times."""
    return mark(path, note)


@task(bind=True, max_retries=None, default_retry_delay=0)
def persistent(self, succeed_on_attempt, countdown=0.0):
    """Retry with no limit (max_retries=None) until attempt ``succeed_on_attempt``; return the attempt number."""
    if self.request.retries + 1 < succeed_on_attempt:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries + 1} failed"), countdown=countdown)
    return self.request.retries + 1


@task(bind=True, autoretry_for=(OSError,), dont_autoretry_for=(FileNotFoundError,), max_retries=3,
      retry_backoff=0.1, retry_backoff_max=0.3, retry_jitter=False)
def backoff_probe(self, path, fail_times, error="OSError"):
    """Append each attempt's time to ``path``; raise ``error`` on the first ``fail_times`` attempts."""
    with open(path, "a") as fh:
        fh.write(f"{time.time():.4f}\n")
    if self.request.retries < fail_times:
        raise {"OSError": OSError, "FileNotFoundError": FileNotFoundError}[error](
            f"attempt {self.request.retries + 1} failed")
    return self.request.retries


@task(time_limit=30, soft_time_limit=0.5)
def naps(seconds, chunk=None):
    """Sleep ``seconds`` in one call (``chunk=None``) or in ``chunk``-second naps; report a soft time limit."""
    from django_tasks_q.exceptions import SoftTimeLimitExceeded

    started = time.monotonic()
    try:
        if chunk is None:
            time.sleep(seconds)
        else:
            while time.monotonic() - started < seconds:
                time.sleep(chunk)
    except SoftTimeLimitExceeded as exc:
        return {"soft_limit": str(exc), "after": round(time.monotonic() - started, 2)}
    return {"slept": seconds}


@task(acks_late=True)
def sleep_late(seconds):
    """``sleep`` with acks_late: the hard time limit test checks its message is acked, not requeued."""
    time.sleep(seconds)
    return seconds


@task
def hold_memory(megabytes):
    """Touch ``megabytes`` MB of memory, then free it; return the pid (prefork recycling tests)."""
    import os

    block = b"\x01" * (megabytes * 1024 * 1024)
    del block
    return os.getpid()


@task
def first_query(note):
    """Query the database before anything else in the task: the first use of the connection after a kill."""
    import os

    from django.contrib.auth.models import Group

    return {"pk": Group.objects.create(name=note).pk, "pid": os.getpid()}


@task(acks_late=True)
def kill_own_child(path):
    """Note the run in ``path``, then SIGKILL the process running it (a prefork child)."""
    import os
    import signal

    with open(path, "a") as fh:
        fh.write("ran\n")
    os.kill(os.getpid(), signal.SIGKILL)


@task
def log(msg):
    """The seeds' chord body: ``chord(group(add.s(i, i) ...), log.s())`` -> ``"LOG: [0, 2, ...]"``."""
    return "LOG: %s" % msg


@task
def tally(values, path):
    """A chord body that appends one line per run to ``path``: how many times it ran, and with what."""
    with open(path, "a") as fh:
        fh.write(f"{len(values)} {sum(values)}\n")
    return sum(values)


@task
def needs_file(path):
    """Fails until ``path`` exists: a failure that a retry after the fix turns into a success."""
    with open(path) as fh:
        return fh.read()


@task
async def async_nap(seconds, note=""):
    """An ``async def`` task: which loop ran it, so tests can see the loop is the thread's, reused."""
    import asyncio

    await asyncio.sleep(seconds)
    return {"note": note, "loop": id(asyncio.get_running_loop())}


@task(soft_time_limit=0.3)
async def async_overrun(path):
    """Sleeps past its soft limit; the cancellation reaches the coroutine, which notes it and re-raises."""
    import asyncio

    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        with open(path, "w") as fh:
            fh.write("cancelled")
        raise


@task(bind=True, max_retries=3, default_retry_delay=0)
async def async_flaky(self, succeed_on_attempt):
    if self.request.retries + 1 < succeed_on_attempt:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries + 1} failed"))
    return self.request.retries


from . import workflow_tasks  # noqa: E402,F401  canvas test tasks (tests/integration/test_workflows_chain.py)


@task
def debugged():
    """Stops in the remote debugger (tests/integration/test_rdb.py connects to it and continues)."""
    from django_tasks_q.contrib import rdb

    x = 1
    rdb.set_trace()
    return x + 1


@task
def gevent_nap(seconds):
    """Sleeps (a yield to other greenlets on ``-P gevent``); the pid shows that one process ran them all."""
    import os

    time.sleep(seconds)
    return {"pid": os.getpid()}
