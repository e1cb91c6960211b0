"""The migrations describe the models: a model change without its migration fails here, not in a user's
``migrate``."""

from __future__ import annotations

import pytest
from django.core.management import call_command


def test_models_and_migrations_agree():
    try:
        call_command("makemigrations", "django_tasks_q", check=True, dry_run=True, verbosity=0)
    except SystemExit as exc:  # makemigrations --check exits 1 when a migration is missing
        pytest.fail(f"django_tasks_q's models have changes no migration records (exit {exc.code}): "
                    f"run `python manage.py makemigrations django_tasks_q`")
