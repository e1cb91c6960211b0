"""Broker and worker fixtures for the integration suite.

``broker_url`` is parametrised over the three real brokers, module-scoped so
one worker process serves a module's tests on each broker. Tests use
``transactional_db``: the worker is another process and must see commits.
"""

from __future__ import annotations

import pytest

from tests.workers import WorkerProcess

BROKERS = ["django", "redis", "amqp"]


@pytest.fixture(scope="module", params=BROKERS)
def broker_url(request, django_db_setup):
    if request.param == "django":
        return "django://"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def use_broker(settings, broker_url, transactional_db):
    """Point this test process at the module's broker."""
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": broker_url}
    return broker_url


@pytest.fixture(scope="module")
def worker(broker_url, django_db_blocker):
    """A threads-pool worker on the default and videos queues."""
    with WorkerProcess(broker_url, "-Q", "default,videos", "-P", "threads", "-c", "2", "-n", "spine@%h") as w:
        yield w
