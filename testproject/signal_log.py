"""A module outside any app's ``tasks.py``, loaded through ``TASKS_Q["IMPORTS"]`` by the signal and logging tests.

It declares a task that logs through ``get_task_logger`` and, when
``TESTPROJECT_SIGNAL_LOG`` names a file, connects a receiver to every
django_tasks_q signal that appends ``<signal> <detail>`` lines to it -- after
a receiver that always raises, to show a raising receiver does no harm.
"""

import os

from django_tasks_q import signals, task
from django_tasks_q.log import get_task_logger

logger = get_task_logger(__name__)

SIGNALS = ["before_task_publish", "after_task_publish", "task_received", "task_prerun", "task_postrun",
           "task_success", "task_failure", "task_retry", "task_revoked", "task_rejected", "task_unknown",
           "worker_init", "worker_ready", "worker_shutting_down", "worker_shutdown", "worker_process_init",
           "beat_init", "beat_tick"]


@task
def logged(note):
    logger.info("working on %s", note)
    return note


def _detail(name, sender, kwargs):
    """What the test checks for each signal: the task id or name it is about, or the pid."""
    request = kwargs.get("request")
    if name in ("task_prerun", "task_postrun", "task_failure"):
        return kwargs["task_id"]
    if name in ("task_received", "task_retry", "task_revoked"):
        return request.id
    if name == "task_success":
        return repr(kwargs["result"])
    if name in ("before_task_publish", "after_task_publish"):
        return kwargs["headers"]["id"]
    if name == "task_unknown":
        return kwargs["name"]
    if name == "task_rejected":
        return sender
    if name == "worker_process_init":
        return str(kwargs["pid"])
    if name == "worker_shutting_down":
        return f"{kwargs['sig']} {kwargs['how']}"
    if name == "beat_tick":
        return ",".join(kwargs["due"]) or "-"
    return type(sender).__name__


def _connect(path):
    def broken(sender, **kwargs):
        raise RuntimeError("a receiver that always fails")

    for name in SIGNALS:
        def record(sender, _name=name, **kwargs):
            with open(path, "a") as log:
                log.write(f"{_name} {_detail(_name, sender, kwargs)} {os.getpid()}\n")

        signal = getattr(signals, name)
        signal.connect(broken, weak=False, dispatch_uid=f"broken-{name}")
        signal.connect(record, weak=False, dispatch_uid=f"record-{name}")


if os.environ.get("TESTPROJECT_SIGNAL_LOG"):
    _connect(os.environ["TESTPROJECT_SIGNAL_LOG"])
