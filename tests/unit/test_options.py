"""``@task(...)`` options and ``apply_async(...)`` options are validated where they are written."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from django_tasks_q import task
from django_tasks_q.core.options import CallOptions, TaskOptions, parse_rate_limit
from django_tasks_q.exceptions import ImproperlyConfigured, InvalidTaskOptions

# -- @task(...) -------------------------------------------------------------

def test_misspelled_task_option_fails_at_declaration_with_hint(clean_registry):
    with pytest.raises(InvalidTaskOptions) as excinfo:
        @task(max_retry=3)
        def resize(x):
            return x

    message = str(excinfo.value)
    assert "'max_retry'" in message
    assert "did you mean 'max_retries'?" in message
    assert "resize" in message  # names the function being declared
    assert not any(name.endswith(".resize") for name in clean_registry.names())


def test_invalid_task_options_is_also_improperly_configured_and_type_error():
    # Callers may catch either the Django-ish or the Python-ish base class.
    with pytest.raises(ImproperlyConfigured):
        TaskOptions.from_kwargs("here", colour="red")
    with pytest.raises(TypeError):
        TaskOptions.from_kwargs("here", colour="red")


def test_several_unknown_options_are_all_named():
    with pytest.raises(InvalidTaskOptions) as excinfo:
        TaskOptions.from_kwargs("@task on m.f", qeue="videos", zzz=1)
    message = str(excinfo.value)
    assert message.startswith("@task on m.f:")
    assert "'qeue' (did you mean 'queue'?)" in message
    assert "'zzz'" in message


@pytest.mark.parametrize("priority", [-1, 256, 3.5, "5", True])
def test_priority_must_be_an_int_from_0_to_255(priority):
    with pytest.raises(InvalidTaskOptions, match="priority"):
        TaskOptions(priority=priority)


@pytest.mark.parametrize("priority", [0, 9, 255])
def test_priority_in_range_is_accepted(priority):
    assert TaskOptions(priority=priority).priority == priority


@pytest.mark.parametrize("name", ["time_limit", "soft_time_limit", "max_retries", "default_retry_delay",
                                  "retry_backoff_max"])
def test_negative_durations_and_counts_are_refused(name):
    with pytest.raises(InvalidTaskOptions, match=name):
        TaskOptions(**{name: -1})


@pytest.mark.parametrize("value", ["600", True])
def test_time_limit_must_be_a_number(value):
    with pytest.raises(InvalidTaskOptions, match="time_limit"):
        TaskOptions(time_limit=value)


def test_max_retries_none_means_forever():
    assert TaskOptions(max_retries=None).max_retries is None


@pytest.mark.parametrize("value", [(ValueError, "IOError"), ("ValueError",), (int,), (ValueError, object)])
def test_autoretry_for_must_hold_exception_classes(value):
    with pytest.raises(InvalidTaskOptions, match="autoretry_for"):
        TaskOptions(autoretry_for=value)


def test_autoretry_for_a_single_class_becomes_a_tuple():
    assert TaskOptions(autoretry_for=IOError).autoretry_for == (IOError,)
    assert TaskOptions(dont_autoretry_for=KeyError).dont_autoretry_for == (KeyError,)


@pytest.mark.parametrize("value", ["10/x", "ten/s", "/s", "10/s/m", "-1/s"])
def test_bad_rate_limit_is_refused_at_declaration(value, clean_registry):
    with pytest.raises(InvalidTaskOptions, match="rate_limit"):
        @task(rate_limit=value)
        def limited():
            pass


@pytest.mark.parametrize("value", ["tomorrow", "60", True, [60]])
def test_bad_task_expires_is_refused_at_declaration(value, clean_registry):
    # Accepted silently, it made every later delay() fail with a bare TypeError.
    with pytest.raises(InvalidTaskOptions, match="expires"):
        @task(expires=value)
        def expiring():
            pass


def test_task_expires_in_seconds_or_datetime():
    assert TaskOptions(expires=60).expires == 60
    assert TaskOptions(expires=datetime(2030, 1, 1, tzinfo=UTC)).expires.year == 2030


def test_bad_base_is_refused(clean_registry):
    with pytest.raises(ImproperlyConfigured, match="Task subclass"):
        @task(base=object)
        def based():
            pass


def test_bind_without_a_self_parameter_is_refused(clean_registry):
    with pytest.raises(ImproperlyConfigured, match="bind=True"):
        @task(bind=True)
        def selfless():
            pass


def test_options_are_frozen():
    options = TaskOptions(queue="videos")
    with pytest.raises(AttributeError):
        options.queue = "other"


# -- parse_rate_limit ------------------------------------------------------

@pytest.mark.parametrize(("value", "per_second"), [
    ("10/s", 10.0),
    ("100/m", 100 / 60),
    ("1000/h", 1000 / 3600),
    ("0.5/s", 0.5),
    (" 3 / m ", 0.05),
])
def test_parse_rate_limit(value, per_second):
    assert parse_rate_limit(value) == pytest.approx(per_second)


def test_parse_rate_limit_none_is_no_limit():
    assert parse_rate_limit(None) is None


# -- apply_async(...) ------------------------------------------------------

def test_unknown_call_option_is_rejected_naming_it():
    with pytest.raises(InvalidTaskOptions) as excinfo:
        CallOptions.from_kwargs("videos.tasks.add.apply_async()", countdwn=5)
    message = str(excinfo.value)
    assert "videos.tasks.add.apply_async()" in message
    assert "'countdwn' (did you mean 'countdown'?)" in message


def test_unknown_call_option_is_rejected_by_apply_async_before_sending():
    from testproject.videos.tasks import add

    with pytest.raises(InvalidTaskOptions, match="'qeue'"):
        add.apply_async((1, 2), qeue="videos")


def test_countdown_and_eta_together_are_rejected():
    with pytest.raises(InvalidTaskOptions, match="countdown or eta"):
        CallOptions(countdown=10, eta=datetime.now(UTC))


@pytest.mark.parametrize("eta", ["2030-01-01T00:00:00", 1_900_000_000, 10.0])
def test_eta_must_be_a_datetime(eta):
    with pytest.raises(InvalidTaskOptions, match="eta must be a datetime"):
        CallOptions(eta=eta)


def test_expires_must_be_seconds_or_datetime():
    with pytest.raises(InvalidTaskOptions, match="expires"):
        CallOptions(expires="tomorrow")
    assert CallOptions(expires=60).expires == 60


def test_call_priority_and_limits_are_checked():
    with pytest.raises(InvalidTaskOptions, match="priority"):
        CallOptions(priority=300)
    with pytest.raises(InvalidTaskOptions, match="soft_time_limit"):
        CallOptions(soft_time_limit=-5)
    with pytest.raises(InvalidTaskOptions, match="headers"):
        CallOptions(headers=[("x", 1)])


def test_valid_call_options_keep_their_values():
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    options = CallOptions.from_kwargs("w", eta=eta, queue="videos", priority=7, headers={"x-trace": "1"})
    assert (options.eta, options.queue, options.priority, options.headers) == (eta, "videos", 7, {"x-trace": "1"})
    assert CallOptions(countdown=-1).countdown == -1  # in the past: run now, as Celery does
