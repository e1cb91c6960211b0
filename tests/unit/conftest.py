"""Fixtures for the unit suite: no broker server, no worker process.

Every unit test sees ``TASKS_Q`` exactly as ``testproject.settings`` (or the
test's own ``override_settings``) spells it: ``TASKS_Q_*`` variables of the
surrounding environment are removed, and the settings cache is dropped
before and after each test so an environment override cannot leak.
"""

from __future__ import annotations

import os

import pytest

from django_tasks_q.conf import ENV_PREFIX
from django_tasks_q.conf import settings as tasks_q_settings
from django_tasks_q.core.registry import registry


@pytest.fixture(autouse=True)
def hermetic_tasks_q_settings(monkeypatch):
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    tasks_q_settings.reload()
    yield
    monkeypatch.undo()
    tasks_q_settings.reload()


def pytest_collection_modifyitems(items):
    """Routing reads TaskRoute/Queue rows, so every unit test may touch the database.

    The mark is added at collection, not requested at run time: pytest-django
    only creates the test database for tests it sees needing one when it
    collects them, and a late request would reach the real database instead.
    """
    for item in items:
        if item.get_closest_marker("django_db") is None and "transactional_db" not in item.fixturenames:
            item.add_marker(pytest.mark.django_db)


@pytest.fixture(autouse=True)
def fresh_route_table():
    from django_tasks_q.core.routing import route_table

    route_table().reload()


@pytest.fixture
def clean_registry():
    """Unregister every task a test declares, so tests do not see each other's tasks."""
    before = set(registry.names(include_internal=True))
    yield registry
    for name in set(registry.names(include_internal=True)) - before:
        registry.unregister(name)


@pytest.fixture
def eager(settings):
    """ALWAYS_EAGER on, everything else as in testproject.settings."""
    settings.TASKS_Q = {**settings.TASKS_Q, "ALWAYS_EAGER": True}
    return settings
