"""Fixtures of the interop suite: both real brokers, and a Redis result backend both sides share.

``interop_broker`` is module-scoped and parametrised over Redis and RabbitMQ
(django:// is ours alone: Celery has no transport for it). Results go to a
separate Redis database (``/1``) of the same session server, as a mixed fleet
would configure ``RESULT_BACKEND`` / ``result_backend``.
"""

from __future__ import annotations

import pytest

from django_tasks_q.broker import connection
from tests.interop.celery_app import app

INTEROP_BROKERS = ["redis", "amqp"]


@pytest.fixture(scope="module", params=INTEROP_BROKERS)
def interop_broker(request, django_db_setup) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="session")
def result_redis_url(redis_url) -> str:
    """The Redis result backend both Celery and we use: database 1 of the session's redis-server."""
    return redis_url.rsplit("/", 1)[0] + "/1"


@pytest.fixture
def clients(settings, interop_broker, result_redis_url, transactional_db):
    """Our client and the Celery client app on the module's broker and the shared result store."""
    settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": interop_broker, "RESULT_BACKEND": result_redis_url}
    connection.reset()
    saved = app.conf.broker_url, app.conf.result_backend
    point_celery(interop_broker, result_redis_url)
    yield
    point_celery(*saved)
    connection.reset()


def point_celery(broker_url: str, result_backend: str | None) -> None:
    """Re-point the Celery client app: it caches its connection pools and backend per app."""
    app.conf.broker_url, app.conf.result_backend = broker_url, result_backend
    app._local.__dict__.pop("backend", None)
    app._pool = None
    app.amqp._producer_pool = None
