"""App config: ``ready()`` wires checks and autodiscovers each app's ``tasks`` module."""

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
        try:
            from .backends import register_framework_tasks
        except ImportError:  # neither django.tasks (Django 6) nor the django-tasks package: nothing to adapt
            return
        register_framework_tasks()  # module-level @task of Django's framework, for TaskQBackend
