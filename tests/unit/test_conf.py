"""``django_tasks_q.conf.settings``: defaults, override_settings, environment."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_tasks_q.conf import DEFAULTS
from django_tasks_q.conf import settings as conf


def test_defaults_are_filled_in():
    # testproject.settings only sets QUEUES.
    assert conf.BROKER_URL == "django://"
    assert conf.RESULT_BACKEND == "django"
    assert conf.DEFAULT_QUEUE == "default"
    assert conf.ACCEPT_CONTENT == ["json"]
    assert conf.PREFETCH_MULTIPLIER == 4
    assert conf.ALWAYS_EAGER is False
    assert conf.SIGNING_KEY is None
    assert conf.QUEUES == {"videos": {"max_priority": 10}, "reports": {}}  # from testproject.settings
    assert set(conf.as_dict()) == set(DEFAULTS)


def test_timezone_defaults_to_time_zone():
    with override_settings(TIME_ZONE="Europe/Paris"):
        assert conf.TIMEZONE == "Europe/Paris"
    with override_settings(TASKS_Q={"TIMEZONE": "Asia/Tokyo"}, TIME_ZONE="Europe/Paris"):
        assert conf.TIMEZONE == "Asia/Tokyo"


def test_override_settings_reloads():
    assert conf.DEFAULT_QUEUE == "default"
    with override_settings(TASKS_Q={"DEFAULT_QUEUE": "celery", "ALWAYS_EAGER": True}):
        assert conf.DEFAULT_QUEUE == "celery"
        assert conf.ALWAYS_EAGER is True
        assert conf.BROKER_URL == "django://"  # the rest still defaulted
        assert conf.QUEUES == {}  # the whole dict was replaced
    assert conf.DEFAULT_QUEUE == "default"
    assert conf.ALWAYS_EAGER is False


def test_pytest_django_settings_fixture_reloads(settings):
    settings.TASKS_Q = {"PREFETCH_MULTIPLIER": 1}
    assert conf.PREFETCH_MULTIPLIER == 1


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="BROKER_ULR"):
        conf.BROKER_ULR  # noqa: B018
    with pytest.raises(AttributeError):
        conf._private  # noqa: B018


@pytest.mark.parametrize(("key", "raw", "value"), [
    ("ACKS_LATE", "true", True),
    ("PREFETCH_MULTIPLIER", "5", 5),
    ("RESULT_EXPIRES", "3600.5", 3600.5),
    ("BROKER_URL", "redis://:pw@cache:6379/2", "redis://:pw@cache:6379/2"),
    ("DEFAULT_QUEUE", "celery", "celery"),
    ("ACCEPT_CONTENT", '["json", "msgpack"]', ["json", "msgpack"]),
    ("RESULT_BACKEND", "null", None),
])
def test_environment_is_used_when_the_key_is_absent(monkeypatch, key, raw, value):
    monkeypatch.setenv(f"TASKS_Q_{key}", raw)
    conf.reload()
    assert getattr(conf, key) == value
    assert type(getattr(conf, key)) is type(value)


def test_environment_is_ignored_when_the_key_is_in_settings(monkeypatch):
    monkeypatch.setenv("TASKS_Q_DEFAULT_QUEUE", "from-env")
    monkeypatch.setenv("TASKS_Q_ACKS_LATE", "true")
    with override_settings(TASKS_Q={"DEFAULT_QUEUE": "from-settings"}):
        assert conf.DEFAULT_QUEUE == "from-settings"
        assert conf.ACKS_LATE is True  # absent from settings: env applies


def test_environment_value_equal_to_a_falsy_setting_does_not_win(monkeypatch):
    monkeypatch.setenv("TASKS_Q_ALWAYS_EAGER", "true")
    with override_settings(TASKS_Q={"ALWAYS_EAGER": False}):
        assert conf.ALWAYS_EAGER is False


def test_values_are_cached_until_reload(monkeypatch):
    assert conf.DEFAULT_QUEUE == "default"
    monkeypatch.setenv("TASKS_Q_DEFAULT_QUEUE", "later")
    assert conf.DEFAULT_QUEUE == "default"
    conf.reload()
    assert conf.DEFAULT_QUEUE == "later"


def test_missing_tasks_q_setting_means_all_defaults():
    with override_settings(TASKS_Q=None):
        assert conf.as_dict()["QUEUES"] == {}
        assert conf.BROKER_URL == "django://"


def test_string_setting_from_environment_stays_a_string(monkeypatch):
    monkeypatch.setenv("TASKS_Q_SIGNING_KEY", "20240517")
    conf.reload()
    assert conf.SIGNING_KEY == "20240517"


def test_signing_keys_from_environment_as_a_json_list(monkeypatch):
    monkeypatch.setenv("TASKS_Q_SIGNING_KEY", '["2026-new", "2025-old"]')
    conf.reload()
    assert conf.SIGNING_KEY == ["2026-new", "2025-old"]
    monkeypatch.setenv("TASKS_Q_SIGNING_KEY", "[not json")
    conf.reload()
    assert conf.SIGNING_KEY == "[not json"  # a key that merely starts with "[" stays itself
