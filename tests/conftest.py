"""Session fixtures that start real servers (logic lives in tests/servers.py)."""

import pytest
from kombu import Connection

from tests import servers


@pytest.fixture(scope="session")
def redis_url():
    """``redis://127.0.0.1:PORT/0`` of a private redis-server."""
    with servers.serve(servers.RedisServer()) as url:
        yield url


@pytest.fixture(scope="session")
def redis_without_client_reply():
    """A Redis that refuses CLIENT (as some proxies do): quiet writes must fall back to waiting."""
    with servers.serve(servers.RedisServer(extra_args=("--rename-command", "CLIENT", ""))) as url:
        yield url


@pytest.fixture(scope="session")
def amqp_url():
    """``amqp://guest:guest@127.0.0.1:PORT//`` of a private RabbitMQ node."""
    with servers.serve(servers.RabbitMQServer()) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url():
    """``postgres://postgres@127.0.0.1:PORT/postgres`` of a private PostgreSQL cluster."""
    with servers.serve(servers.PostgresServer()) as url:
        yield url


_MARKERS = {"redis_url": "redis", "amqp_url": "amqp", "postgres_url": "postgres"}


def pytest_collection_modifyitems(items):
    # Tests that use a server fixture get its marker, so `-m "not amqp"` works.
    for item in items:
        for fixture, marker in _MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


#: the dependencies whose supported range `make test` (newest) and `make test-lowest` (lowest) run at both ends
_RANGE = ("Django", "kombu", "redis", "hiredis", "amqp", "croniter", "django-redis", "django-tasks", "celery")


def pytest_report_header(config):
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return "dependencies: " + ", ".join(f"{name} {installed(name)}" for name in _RANGE)


def pytest_terminal_summary(terminalreporter):
    if servers.STARTUP_TIMES:
        started = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in servers.STARTUP_TIMES)
        terminalreporter.write_line(f"real servers started: {started}")


@pytest.fixture
def broker(settings):
    """``broker(url, **more_settings)`` points this test process's publishing at ``url``."""
    from django_tasks_q.broker import connection

    def use(url: str, **extra):
        settings.TASKS_Q = {**settings.TASKS_Q, "BROKER_URL": url, **extra}
        connection.reset()

    yield use
    connection.reset()


def take(queue: str):
    """One message from ``queue`` of kombu's in-process ``memory://`` broker."""
    with Connection("memory://") as conn:
        simple = conn.SimpleQueue(queue)
        try:
            return simple.get(timeout=1)
        finally:
            simple.close()
