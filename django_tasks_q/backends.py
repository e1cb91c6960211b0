"""``TaskQBackend``: django-tasks-q as a backend for Django's task framework.

Django 6 ships ``django.tasks``; on Django 5.2 the ``django-tasks`` package
provides the same API. With::

    TASKS = {"default": {"BACKEND": "django_tasks_q.backends.TaskQBackend",
                         "QUEUES": ["default", "videos"],
                         "OPTIONS": {"ENQUEUE_ON_COMMIT": False}}}

a function declared with the framework's ``@task`` is sent by
``enqueue()`` as a task-protocol message named after its module path, run by
``manage.py taskworker`` like any of ours, and its ``TaskResult`` is read
back from our result backend. Workers find framework tasks the way they find
ours: module-level in an installed app's ``tasks.py``
(:func:`register_framework_tasks`, called at start-up).

What maps to what:

* ``run_after`` -> ``eta``; ``queue_name`` -> the queue (the framework's
  default queue name defers to our routing: ``ROUTES``, ``TaskRoute`` rows);
* ``priority`` (-100 ... 100, default 0) -> our 0 ... 9 by
  :func:`our_priority` (0 sends no priority: the queue's default order);
* our states -> the framework's statuses by :data:`STATUS` (PENDING and
  RECEIVED are READY; STARTED, PROGRESS and RETRY are RUNNING; FAILURE and
  REVOKED are FAILED);
* a failure's ``exc_module`` / ``exc_type`` -> ``TaskError.exception_class_path``
  (``builtins.ValueError``), its traceback -> ``TaskError.traceback``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from traceback import format_exception
from types import ModuleType
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core import checks
from django.db import transaction
from django.utils import timezone

from .core import aio
from .core.options import TaskOptions
from .core.protocol import new_id
from .core.registry import registry
from .core.task import Task

if TYPE_CHECKING:  # checked against the backport, the one these machines run (Django 5.2)
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task as FrameworkTask
    from django_tasks.base import TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
else:
    try:  # Django >= 6.0
        from django.tasks import TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task as FrameworkTask
        from django.tasks.base import TaskError
        from django.tasks.exceptions import TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
    except ImportError:  # Django 5.2 with the django-tasks package
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task as FrameworkTask
        from django_tasks.base import TaskError
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started

logger = logging.getLogger(__name__)

#: our state -> the framework's status
STATUS = {
    "PENDING": TaskResultStatus.READY, "RECEIVED": TaskResultStatus.READY,
    "SUCCESS": TaskResultStatus.SUCCESSFUL, "FAILURE": TaskResultStatus.FAILED, "REVOKED": TaskResultStatus.FAILED,
}
#: options this backend reads from ``TASKS[alias]["OPTIONS"]``
KNOWN_OPTIONS = {"ENQUEUE_ON_COMMIT"}
DEFAULT_QUEUE_NAME = "default"


def our_priority(priority: int) -> int | None:
    """The framework's -100 ... 100 onto our 0 ... 9 (higher runs first on every broker); 0 -> None.

    -100 is 0, 100 is 9, linear in between (rounded): 50 -> 7, -50 -> 2.
    The default 0 sends no priority, so a queue without ``max_priority``
    on RabbitMQ still takes the task.
    """
    if priority == 0:
        return None
    return round((priority + 100) * 9 / 200)


class Adapter(Task):
    """Runs a framework task on our worker: its signals, its context, our retries and results."""

    def __init__(self, framework_task: FrameworkTask) -> None:
        self.framework_task = framework_task
        super().__init__(framework_task.func, TaskOptions(name=framework_task.module_path))

    def run(self, *args: Any, **kwargs: Any) -> Any:
        framework = self.framework_task
        request = self.request
        started = timezone.now()
        result: TaskResult[Any] = TaskResult(
            task=framework, id=request.id or new_id(), status=TaskResultStatus.RUNNING, enqueued_at=None,
            started_at=started, last_attempted_at=started, finished_at=None, args=list(args),
            kwargs=dict(kwargs), backend=framework.backend, errors=[],
            worker_ids=[request.hostname or "worker"] * ((request.retries or 0) + 1))
        task_started.send(sender=TaskQBackend, task_result=result)
        call_args = (TaskContext(task_result=result), *args) if framework.takes_context else args
        try:
            if self.is_async:  # on the thread's own loop, as our async tasks (core/aio.py)
                value = aio.run(framework.func(*call_args, **kwargs))
            else:
                value = framework.func(*call_args, **kwargs)
        except BaseException as exc:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            object.__setattr__(result, "finished_at", timezone.now())
            result.errors.append(TaskError(exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                                           traceback="".join(format_exception(exc))))
            task_finished.send(sender=TaskQBackend, task_result=result)
            raise
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "_return_value", value)
        task_finished.send(sender=TaskQBackend, task_result=result)
        return value


def adapter_for(framework_task: FrameworkTask) -> Adapter:
    """The registered adapter for a framework task (registered on first use)."""
    existing = registry.get(framework_task.module_path)
    if isinstance(existing, Adapter) and existing.framework_task.func is framework_task.func:
        return existing
    return registry.register(Adapter(framework_task))  # type: ignore[return-value]


def register_framework_tasks() -> int:
    """Register every module-level framework task in installed apps' ``tasks`` modules (worker start-up)."""
    found = 0
    for config in apps.get_app_configs():
        module = sys.modules.get(f"{config.name}.tasks")
        if module is None:
            continue
        for value in vars(module).values():
            if isinstance(value, FrameworkTask) and value.module_path.startswith(f"{module.__name__}."):
                adapter_for(value)
                found += 1
    return found


class TaskQBackend(BaseTaskBackend):
    """Enqueue through django-tasks-q's broker; read results from its result backend."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.enqueue_on_commit = bool(self.options.get("ENQUEUE_ON_COMMIT", False))

    def enqueue(self, task: FrameworkTask, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        adapter = adapter_for(task)
        args, kwargs = list(args), dict(kwargs)
        options: dict[str, Any] = {"task_id": new_id()}
        if task.queue_name != DEFAULT_QUEUE_NAME:
            options["queue"] = task.queue_name
        if our_priority(task.priority) is not None:
            options["priority"] = our_priority(task.priority)
        if task.run_after is not None:
            options["eta"] = task.run_after
        now = timezone.now()
        result: TaskResult[Any] = TaskResult(task=task, id=options["task_id"], status=TaskResultStatus.READY,
                                             enqueued_at=now,
                            started_at=None, last_attempted_at=None, finished_at=None, args=args, kwargs=kwargs,
                            backend=self.alias, errors=[], worker_ids=[])
        _record_ready(result, adapter.name, options.get("queue", ""))

        def send() -> None:
            adapter.apply_async(args, kwargs, **options)
            task_enqueued.send(sender=type(self), task_result=result)

        if self.enqueue_on_commit:
            transaction.on_commit(send)
        else:
            send()
        return result

    def get_result(self, result_id: str) -> TaskResult:
        from .models import TaskResult as Row

        row = Row.objects.filter(task_id=result_id).first()
        if row is None:
            return self._from_backend(result_id)
        framework = _framework_task(row.task_name)
        if framework is None:
            raise TaskResultDoesNotExist(f"result {result_id!r} is for {row.task_name!r}, not a framework task")
        status = STATUS.get(row.state, TaskResultStatus.RUNNING)
        errors = []
        if row.state in ("FAILURE", "REVOKED", "RETRY") and isinstance(row.result, dict):
            path = f"{row.result.get('exc_module') or 'builtins'}.{row.result.get('exc_type') or 'Exception'}"
            errors.append(TaskError(exception_class_path=path, traceback=row.traceback or ""))
        result: TaskResult[Any] = TaskResult(
            task=framework, id=row.task_id, status=status, enqueued_at=row.date_created,
            started_at=row.date_started, last_attempted_at=row.date_started, finished_at=row.date_done,
            args=list(row.args or []), kwargs=dict(row.kwargs or {}), backend=self.alias, errors=errors,
            worker_ids=[row.worker] * (row.retries + 1) if row.worker else [])
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", row.result)
        return result

    def _from_backend(self, result_id: str) -> TaskResult:
        """A result backend other than the ORM (Redis): state, value and error only."""
        from .conf import settings
        from .results.backend import get_backend

        meta = None if settings.RESULT_BACKEND in (None, "django") else get_backend().meta(result_id)
        framework = _framework_task(meta.task_name) if meta is not None else None
        if meta is None or framework is None:
            raise TaskResultDoesNotExist(f"no result is recorded for {result_id!r}")
        status = STATUS.get(meta.state, TaskResultStatus.RUNNING)
        result: TaskResult[Any] = TaskResult(task=framework, id=result_id, status=status, enqueued_at=None,
                                             started_at=None,
                            last_attempted_at=None, finished_at=meta.date_done, args=[], kwargs={},
                            backend=self.alias, errors=[], worker_ids=[])
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", meta.result)
        return result

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        unknown = set(self.options) - KNOWN_OPTIONS
        if unknown:
            yield checks.Error(f"TASKS[{self.alias!r}]['OPTIONS'] has unknown keys {sorted(unknown)}; "
                               f"known: {sorted(KNOWN_OPTIONS)}", id="django_tasks_q.E020")
        if not apps.is_installed("django_tasks_q"):
            yield checks.Error(f"TASKS[{self.alias!r}] uses TaskQBackend but 'django_tasks_q' is not in "
                               "INSTALLED_APPS", id="django_tasks_q.E021")


def _record_ready(result: TaskResult, name: str, queue: str) -> None:
    """An ORM row in PENDING before the message goes out, so ``get_result`` knows the id at once.

    Inside the caller's transaction: with ``ENQUEUE_ON_COMMIT`` a rollback
    removes the row together with the send. The worker's writes come after.
    """
    from .conf import settings
    from .models import TaskResult as Row

    if settings.RESULT_BACKEND == "django":
        Row.objects.create(task_id=result.id, task_name=name, state="PENDING", args=result.args,
                           kwargs=result.kwargs, queue=queue)


def _framework_task(name: str) -> FrameworkTask | None:
    """The framework task a stored row names, or None; a task name is data and never imported.

    Rows are also written from messages a worker refused, so the name may be anyone's choice. It is
    looked up in our registry (where :func:`register_framework_tasks` put every module-level framework
    task of an installed app's ``tasks`` module at start-up, and :func:`adapter_for` each one enqueued
    here), then in a module this process has already imported, read from its ``__dict__`` so that not
    even a module ``__getattr__`` runs.
    """
    adapter = registry.get(name)
    if isinstance(adapter, Adapter):
        return adapter.framework_task
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    value = vars(module).get(attribute) if isinstance(module, ModuleType) else None
    return value if isinstance(value, FrameworkTask) and value.module_path == name else None


__all__ = ["Adapter", "STATUS", "TaskQBackend", "adapter_for", "our_priority", "register_framework_tasks"]
