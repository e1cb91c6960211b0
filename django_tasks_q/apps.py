"""App config: ``ready()`` wires checks, autodiscovers each app's ``tasks`` module and imports ``IMPORTS``."""

from importlib import import_module

from django.apps import AppConfig


class DjangoTasksQConfig(AppConfig):
    name = "django_tasks_q"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from . import checks  # noqa: F401  registers the system checks
        from .broker.transport.django import register

        register()  # kombu learns the django:// scheme

        from .core import builtins  # noqa: F401  celery.map / celery.starmap / celery.chunks
        autodiscover_modules("tasks")
        import_listed_modules()
        try:
            from .backends import register_framework_tasks
        except ImportError:  # neither django.tasks (Django 6) nor the django-tasks package: nothing to adapt
            return
        register_framework_tasks()  # module-level @task of Django's framework, for TaskQBackend


def import_listed_modules() -> None:
    """``TASKS_Q["IMPORTS"]``: task (or signal receiver) modules outside the apps' ``tasks.py``, as
    Celery's ``imports``. A module that cannot be imported stops the process with its name: a worker
    that started without it would refuse its tasks as unknown."""
    from .conf import settings
    from .exceptions import ImproperlyConfigured

    modules = settings.IMPORTS
    for name in modules if isinstance(modules, (list, tuple)) else ():  # a wrong type: the checks report it
        if not isinstance(name, str):
            continue
        try:
            import_module(name)
        except ImportError as exc:
            raise ImproperlyConfigured(f"TASKS_Q['IMPORTS'] lists {name!r}, which cannot be imported: {exc}") from exc
