"""Signals sent around task execution and worker life. Only definitions live here."""

from django.dispatch import Signal

#: sender=task; kwargs: task_id, task, args, kwargs
task_prerun = Signal()
#: sender=task; kwargs: task_id, task, args, kwargs, retval, state
task_postrun = Signal()
#: sender=task; kwargs: result
task_success = Signal()
#: sender=task; kwargs: task_id, exception, args, kwargs, traceback, einfo
task_failure = Signal()
#: sender=task; kwargs: request, reason, einfo
task_retry = Signal()
#: sender=task name; kwargs: message, reason (a message was refused: unknown task, bad body...)
task_rejected = Signal()
#: sender=task (None if unknown here); kwargs: request, terminated, signum, expired (revoked or expired, not run
#: or stopped)
task_revoked = Signal()
#: sender=Worker instance
worker_ready = Signal()
#: sender=Worker instance
worker_shutdown = Signal()
