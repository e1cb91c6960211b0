"""Fixtures of the interop suite: both real brokers, and a Redis result backend both sides share.

``interop_broker`` is module-scoped and parametrised over Redis and RabbitMQ
(django:// is ours alone: Celery has no transport for it). Results go to a
separate Redis database (``/1``) of the same session server, as a mixed fleet
would configure ``RESULT_BACKEND`` / ``result_backend``.
"""

from __future__ import annotations

import pytest

INTEROP_BROKERS = ["redis", "amqp"]


@pytest.fixture(scope="module", params=INTEROP_BROKERS)
def interop_broker(request, django_db_setup) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="session")
def result_redis_url(redis_url) -> str:
    """The Redis result backend both Celery and we use: database 1 of the session's redis-server."""
    return redis_url.rsplit("/", 1)[0] + "/1"
