"""The package's exceptions: hierarchy and messages users rely on."""

from __future__ import annotations

import pytest

from django_tasks_q import exceptions as e


@pytest.mark.parametrize(("cls", "builtin"), [
    (e.InvalidTaskOptions, TypeError),
    (e.NotRegistered, KeyError),
    (e.EncodeError, TypeError),
    (e.InvalidMessage, ValueError),
    (e.BrokerUnavailable, ConnectionError),
])
def test_errors_are_also_the_builtin_users_catch(cls, builtin):
    assert issubclass(cls, builtin)
    assert issubclass(cls, e.TasksQError)


def test_timeout_error_is_ours_not_the_builtin():
    # AsyncResult.get(timeout=...) raising an OSError subclass would be caught by socket-error handlers.
    assert not issubclass(e.TimeoutError, OSError)
    assert issubclass(e.TimeoutError, e.TasksQError)


def test_invalid_task_options_is_improperly_configured():
    assert issubclass(e.InvalidTaskOptions, e.ImproperlyConfigured)


def test_retry_message():
    assert str(e.Retry()) == "Retry"
    assert str(e.Retry(when=3)) == "Retry in 3s"
    assert str(e.Retry("rate limited")) == "rate limited"
    assert str(e.Retry("rate limited", when=3)) == "rate limited"


def test_retry_keeps_cause_and_delay():
    cause = ConnectionError("down")
    retry = e.Retry(exc=cause, when=5)
    assert retry.exc is cause and retry.when == 5


def test_reject():
    assert e.Reject("bad", requeue=True).requeue is True
    assert e.Reject().requeue is False
    assert str(e.Reject("bad")) == "bad"
