"""System checks on ``settings.TASKS_Q``: every error names the key."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_tasks_q.checks import check_settings
from django_tasks_q.exceptions import ImproperlyConfigured

KEY, OLD_KEY = "k" * 32, "o" * 32  # a signing key must be at least 32 bytes


def errors_for(tasks_q) -> list:
    with override_settings(TASKS_Q=tasks_q):
        return check_settings()


def test_clean_config_has_no_errors():
    assert errors_for({}) == []
    assert errors_for({
        "BROKER_URL": "redis://:secret@localhost:6379/0",
        "RESULT_BACKEND": None,
        "QUEUES": {"videos": {"max_priority": 10, "exchange_type": "topic", "routing_key": "media.#"}},
        "ROUTES": {"videos.*": "videos"},
        "PREFETCH_MULTIPLIER": 1,
        "ACKS_LATE": True,
        "SIGNING_KEY": KEY,
        "RESULT_EXPIRES": None,
    }) == []


def test_testproject_settings_are_clean():
    assert check_settings() == []


def test_unknown_key_is_named_with_a_hint():
    errors = errors_for({"BROKER_ULR": "redis://"})
    assert len(errors) == 1
    assert errors[0].id == "django_tasks_q.E001"
    assert "'BROKER_ULR'" in errors[0].msg
    assert "unknown setting" in errors[0].msg
    assert errors[0].hint == "did you mean 'BROKER_URL'?"


def test_unknown_key_without_a_close_match_lists_the_known_ones():
    errors = errors_for({"ZZZZZZZ": 1})
    assert "BROKER_URL" in errors[0].hint and "PREFETCH_MULTIPLIER" in errors[0].hint


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("PREFETCH_MULTIPLIER", "4", "must be int"),
    ("PREFETCH_MULTIPLIER", True, "must be int"),
    ("ACKS_LATE", "yes", "must be bool"),
    ("QUEUES", ["videos"], "must be dict"),
    ("BROKER_URL", 6379, "must be str"),
    ("RESULT_EXPIRES", "1d", "must be int or float or NoneType"),
])
def test_wrong_type_is_named(key, value, expected):
    errors = errors_for({key: value})
    assert [e.id for e in errors] == ["django_tasks_q.E002"]
    assert f"TASKS_Q[{key!r}]" in errors[0].msg
    assert expected in errors[0].msg
    assert repr(value) in errors[0].msg


def test_wrong_type_from_the_environment_is_reported(monkeypatch):
    monkeypatch.setenv("TASKS_Q_ACKS_LATE", '"sometimes"')
    errors = errors_for({})
    assert len(errors) == 1 and "TASKS_Q['ACKS_LATE']" in errors[0].msg


def test_bad_broker_scheme():
    errors = errors_for({"BROKER_URL": "kafka://broker:9092"})
    assert [e.id for e in errors] == ["django_tasks_q.E003"]
    assert "'kafka'" in errors[0].msg and "BROKER_URL" in errors[0].msg
    assert "redis://" in errors[0].hint and "django://" in errors[0].hint


@pytest.mark.parametrize("url", ["django://", "redis://h:6379/0", "rediss://h/0", "amqp://u:p@h//", "memory://",
                                 "sentinel://h:26379"])
def test_supported_broker_schemes(url):
    assert errors_for({"BROKER_URL": url}) == []


def test_unsupported_result_backend():
    errors = errors_for({"RESULT_BACKEND": "mongodb://localhost/results"})
    assert [e.id for e in errors] == ["django_tasks_q.E004"]
    assert "RESULT_BACKEND" in errors[0].msg and "mongodb://localhost/results" in errors[0].msg


LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
DJANGO_REDIS = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:6379/2"}


@pytest.mark.parametrize(("value", "caches", "problem"), [
    ("cache://results", {"default": LOCMEM, "sessions": LOCMEM},
     "cache alias 'results' is not in settings.CACHES (its aliases: 'default', 'sessions')"),
    ("cache://", {"default": LOCMEM}, "no cache alias after 'cache://'"),
    ("cache", {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
     "settings.CACHES['default'] is DummyCache, which keeps nothing"),
])
def test_a_cache_result_backend_that_cannot_keep_results_is_an_error(value, caches, problem):
    from django_tasks_q.results.backend import _make

    with override_settings(CACHES=caches):
        errors = errors_for({"RESULT_BACKEND": value})
        assert [e.id for e in errors] == ["django_tasks_q.E004"]
        assert errors[0].msg.startswith(f"TASKS_Q['RESULT_BACKEND']: {value!r}: {problem}")
        assert "'cache://<alias>'" in errors[0].hint
        with pytest.raises(ImproperlyConfigured) as raised:  # the worker refuses it with the same words
            _make(value)
        assert f"TASKS_Q['RESULT_BACKEND'] = {value!r}: {problem}" in str(raised.value)


@pytest.mark.parametrize(("backend", "says"), [
    ("django.core.cache.backends.locmem.LocMemCache", "keeps entries in each process's own memory"),
    ("django.core.cache.backends.filebased.FileBasedCache", "implements incr() as a read then a write"),
    ("django.core.cache.backends.db.DatabaseCache", "implements incr() as a read then a write"),
])
def test_a_cache_result_backend_on_a_process_local_or_non_atomic_cache_is_warned(backend, says):
    from django_tasks_q.checks import check_result_cache

    with override_settings(CACHES={"default": DJANGO_REDIS, "results": {"BACKEND": backend, "LOCATION": "x"}},
                           TASKS_Q={"RESULT_BACKEND": "cache://results"}):
        assert check_settings() == []
        warnings = check_result_cache()
    assert [w.id for w in warnings] == ["django_tasks_q.W005"]
    assert warnings[0].msg.startswith("TASKS_Q['RESULT_BACKEND'] = 'cache://results' keeps results in "
                                      f"settings.CACHES['results'], whose {backend.rpartition('.')[2]} {says}")
    assert "django_redis.cache.RedisCache" in warnings[0].hint


@pytest.mark.parametrize("value", ["cache", "cache://results"])
def test_a_cache_result_backend_on_django_redis_is_clean(value):
    from django_tasks_q.checks import check_result_cache
    from django_tasks_q.results.backend import _make
    from django_tasks_q.results.cache import CacheBackend

    with override_settings(CACHES={"default": DJANGO_REDIS, "results": DJANGO_REDIS},
                           TASKS_Q={"RESULT_BACKEND": value}):
        assert check_settings() == [] and check_result_cache() == []
        made = _make(value)
    assert isinstance(made, CacheBackend) and made.alias == ("default" if value == "cache" else "results")


def test_the_cache_check_leaves_other_result_backends_alone():
    from django_tasks_q.checks import check_result_cache

    for value in ("django", None, "redis://localhost:6379/1", "cache://missing"):  # the last one is E004's
        with override_settings(TASKS_Q={"RESULT_BACKEND": value}):
            assert check_result_cache() == []


def test_prefetch_multiplier_must_be_positive():
    errors = errors_for({"PREFETCH_MULTIPLIER": 0})
    assert [e.id for e in errors] == ["django_tasks_q.E005"]


@pytest.mark.parametrize("key", ["ETA_HOLD_MAX", "REVOKE_EXPIRES", "WORKER_HEARTBEAT", "WORKER_STUCK_AFTER",
                                 "EVENTS_KEEP_SECONDS", "EVENTS_KEEP_ROWS", "ACTIVITY_KEEP_DAYS"])
def test_durations_must_not_be_negative(key):
    errors = errors_for({key: -1})
    assert [e.id for e in errors] == ["django_tasks_q.E008"]
    assert key in errors[0].msg and "-1" in errors[0].msg
    assert errors_for({key: 0}) == []


def test_unknown_serializer():
    errors = errors_for({"TASK_SERIALIZER": "jsonn"})
    assert [e.id for e in errors] == ["django_tasks_q.E006"]
    assert "TASK_SERIALIZER" in errors[0].msg and "'jsonn'" in errors[0].msg
    errors = errors_for({"ACCEPT_CONTENT": ["json", "bogus"]})
    assert "ACCEPT_CONTENT" in errors[0].msg and "'bogus'" in errors[0].msg


def test_content_type_spelling_is_accepted():
    assert errors_for({"ACCEPT_CONTENT": ["application/json"]}) == []


def test_queue_entry_with_unknown_key():
    errors = errors_for({"QUEUES": {"videos": {"max_prio": 10}}})
    assert [e.id for e in errors] == ["django_tasks_q.E007"]
    assert "'videos'" in errors[0].msg and "max_prio" in errors[0].msg


@pytest.mark.parametrize("entry", [5, ["durable"], "videos"])
def test_queue_entry_that_is_not_a_dict(entry):
    errors = errors_for({"QUEUES": {"videos": entry}})
    assert [e.id for e in errors] == ["django_tasks_q.E007"]
    assert "'videos'" in errors[0].msg and "must be a dict" in errors[0].msg


def test_settings_not_a_dict():
    errors = errors_for(["BROKER_URL"])
    assert len(errors) == 1 and "must be a dict" in errors[0].msg


def test_check_command_fails_on_a_bad_key():
    with override_settings(TASKS_Q={"BROKER_ULR": "redis://"}):
        with pytest.raises(SystemCheckError, match="BROKER_ULR"):
            call_command("check")


def test_check_command_passes_on_the_testproject():
    call_command("check")


def test_signing_key_may_be_a_list_of_keys_for_rotation():
    assert errors_for({"SIGNING_KEY": [KEY, OLD_KEY]}) == []
    for bad, where in (([], "empty list"), ([KEY, ""], "key #2 of the list is empty"),
                       ([KEY, 3], "key #2 of the list is a int")):
        errors = errors_for({"SIGNING_KEY": bad})
        assert [e.id for e in errors] == ["django_tasks_q.E009"], bad
        assert "SIGNING_KEY" in errors[0].msg and where in errors[0].msg and KEY not in errors[0].msg


@pytest.mark.parametrize("keys", ["", "short-but-not-empty", [KEY, "x" * 31], ["", OLD_KEY]])
def test_an_empty_or_short_signing_key_is_an_error_naming_its_position_not_its_value(keys):
    """``TASKS_Q_SIGNING_KEY=`` from an unset secret must not turn verification off without a word."""
    errors = errors_for({"SIGNING_KEY": keys})
    assert [e.id for e in errors] == ["django_tasks_q.E009"]
    assert "32 bytes" in errors[0].msg + errors[0].hint
    if isinstance(keys, list):
        assert f"key #{keys.index(min(keys, key=len)) + 1} of the list" in errors[0].msg
    for key in [keys] if isinstance(keys, str) else keys:
        assert not key or key not in errors[0].msg + errors[0].hint


def test_an_empty_signing_key_from_the_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("TASKS_Q_SIGNING_KEY", "")
    errors = errors_for({})
    assert [e.id for e in errors] == ["django_tasks_q.E009"] and "is empty" in errors[0].msg


@pytest.mark.parametrize(("tasks_q", "secret"), [
    ({"SIGNING_KEY": {"key": "hunter2-hunter2"}}, "hunter2"),
    ({"SIGNING_KEY": ["hunter2-hunter2-hunter2", "short-hunter2"]}, "hunter2"),
    ({"SIGNING_KEY": "hunter2"}, "hunter2"),
    ({"API_TOKEN": ["hunter2-token"]}, "hunter2"),
    ({"API_TOKEN": 12345678}, "12345678"),
    ({"BROKER_TRANSPORT_OPTIONS": [("password", "hunter2")]}, "hunter2"),
    ({"BROKER_URL": ["redis://:hunter2@cache/0"]}, "hunter2"),
    ({"RESULT_BACKEND": "redis://:hunter2@cache:6379/zero"}, "hunter2"),
    ({"RESULT_BACKEND": "redis://:hunter2@cache:6379/zero?password=hunter2"}, "hunter2"),
    ({"RESULT_BACKEND": "redis://:hunter/2@cache:6379/0"}, "2@cache"),  # urllib quotes a password's tail as the port
    ({"RESULT_BACKEND": "mongodb://u:hunter2@db/results"}, "hunter2"),
])
def test_check_messages_never_echo_a_secret(tasks_q, secret):
    errors = errors_for(tasks_q)
    assert errors, tasks_q
    for error in errors:
        assert secret not in f"{error.msg} {error.hint}", error


def test_a_bad_result_backend_url_is_shown_masked():
    from django_tasks_q.exceptions import ImproperlyConfigured
    from django_tasks_q.results.backend import _make

    errors = errors_for({"RESULT_BACKEND": "redis://:hunter2@cache:6379/zero"})
    assert [e.id for e in errors] == ["django_tasks_q.E004"] and "redis://:**@cache:6379/zero" in errors[0].msg
    with pytest.raises(ImproperlyConfigured) as raised:
        _make("redis://:hunter2@cache:6379/zero")
    assert "hunter2" not in str(raised.value) and "redis://:**@cache:6379/zero" in str(raised.value)


def deploy_warnings(tasks_q, **more) -> list:
    from django_tasks_q.checks import check_broker_exposure

    with override_settings(TASKS_Q=tasks_q, **more):
        return check_broker_exposure()


@pytest.mark.parametrize(("tasks_q", "ids"), [
    ({"BROKER_URL": "redis://cache.internal:6379/0"}, ["W003", "W004"]),
    ({"BROKER_URL": "amqp://guest@rabbit.internal//", "SIGNING_KEY": KEY}, ["W003"]),
    ({"BROKER_URL": "redis://:pw@cache.internal:6379/0"}, ["W004"]),
    ({"BROKER_URL": "redis://cache.internal:6379/0?password=pw"}, ["W004"]),
    ({"BROKER_URL": "sentinel://h1:26379;sentinel://:pw@h2:26379", "SIGNING_KEY": KEY}, ["W003"]),
    ({"BROKER_URL": "redis://:pw@cache.internal:6379/0", "SIGNING_KEY": [KEY, OLD_KEY]}, []),
    ({"BROKER_URL": "redis://localhost:6379/0"}, []),
    ({"BROKER_URL": "redis://127.0.0.1:6379/0"}, []),
    ({"BROKER_URL": "amqp://guest:guest@[::1]:5672//"}, []),
    ({"BROKER_URL": "django://"}, []),
    ({"BROKER_URL": "memory://"}, []),
])
def test_deploy_warnings_about_an_open_or_unsigned_remote_broker(tasks_q, ids):
    warnings = deploy_warnings(tasks_q)
    assert [w.id for w in warnings] == [f"django_tasks_q.{i}" for i in ids]
    for warning in warnings:
        assert "pw" not in warning.msg.replace("password", "") and "docs/security.md" in warning.hint


def test_deploy_warnings_show_only_under_check_deploy():
    from django.core.checks import run_checks

    ours = {"django_tasks_q.W003", "django_tasks_q.W004"}
    with override_settings(TASKS_Q={"BROKER_URL": "redis://cache.internal:6379/0"}):
        assert not ours & {m.id for m in run_checks()}
        assert ours <= {m.id for m in run_checks(include_deployment_checks=True)}


def test_imports_must_list_module_paths():
    assert errors_for({"IMPORTS": ["testproject.signal_log"]}) == []
    errors = errors_for({"IMPORTS": ["testproject.signal_log", 7]})
    assert [e.id for e in errors] == ["django_tasks_q.E010"] and "IMPORTS" in errors[0].msg


def test_accepting_pickle_is_warned_about():
    from django_tasks_q.checks import check_accepted_content

    with override_settings(TASKS_Q={"ACCEPT_CONTENT": ["json", "pickle"]}):
        warnings = check_accepted_content()
    assert [w.id for w in warnings] == ["django_tasks_q.W001"]
    assert "pickle" in warnings[0].msg and "run code" in warnings[0].msg
    with override_settings(TASKS_Q={"ACCEPT_CONTENT": ["json"]}):
        assert check_accepted_content() == []


def test_an_imports_module_that_cannot_be_imported_is_named():
    from django_tasks_q.apps import import_listed_modules
    from django_tasks_q.exceptions import ImproperlyConfigured

    with override_settings(TASKS_Q={"IMPORTS": ["testproject.no_such_module"]}):
        with pytest.raises(ImproperlyConfigured, match="IMPORTS.*'testproject.no_such_module'.*cannot be imported"):
            import_listed_modules()


def not_installed(monkeypatch, *modules: str) -> None:
    """Make ``modules`` unimportable the way a missing package is (Python's None-in-sys.modules marker), and
    forget kombu's transports so that the check imports them again and meets the gap."""
    for name in [m for m in sys.modules if m.startswith(("kombu.transport.redis", "kombu.transport.pyamqp"))]:
        monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(("url", "module", "extra"), [
    ("redis://localhost:6379/0", "redis", "redis"),
    ("rediss://localhost:6380/0", "redis", "redis"),
    ("sentinel://localhost:26379;sentinel://other:26379", "redis", "redis"),
    ("amqp://guest:guest@localhost//", "amqp", "amqp"),
])
def test_a_broker_whose_packages_are_missing_is_named_with_the_pip_command(monkeypatch, url, module, extra):
    not_installed(monkeypatch, module)
    errors = errors_for({"BROKER_URL": url})
    assert [e.id for e in errors] == ["django_tasks_q.E011"]
    assert "TASKS_Q['BROKER_URL']" in errors[0].msg and f"{module!r}" in errors[0].msg
    assert errors[0].hint == f'install it with: pip install "django-tasks-q[{extra}]"'


def test_kombus_redis_transport_without_packaging(monkeypatch):
    """The failure users met (issue 20): kombu's Redis transport imports ``packaging`` (kombu 5.5.4 and
    later), which kombu declares only in its own ``redis`` extra. Without it the check names it; a kombu
    whose transport does not import it (5.5.2, the floor) needs nothing more."""
    transport_source = open(importlib.util.find_spec("kombu.transport.redis").origin).read()
    not_installed(monkeypatch, "packaging", "packaging.version")
    errors = errors_for({"BROKER_URL": "redis://localhost:6379/0"})
    if "packaging" not in transport_source:
        assert errors == []
        return
    assert [e.id for e in errors] == ["django_tasks_q.E011"]
    assert "'packaging'" in errors[0].msg and 'django-tasks-q[redis]' in errors[0].hint


def test_the_embedded_broker_needs_no_extra(monkeypatch):
    not_installed(monkeypatch, "redis", "amqp")
    assert errors_for({"BROKER_URL": "django://"}) == []


def test_a_redis_result_backend_whose_package_is_missing_is_named(monkeypatch):
    not_installed(monkeypatch, "redis")
    errors = errors_for({"RESULT_BACKEND": "redis://localhost:6379/1"})
    assert [e.id for e in errors] == ["django_tasks_q.E011"]
    assert "TASKS_Q['RESULT_BACKEND']" in errors[0].msg and "'redis'" in errors[0].msg


def test_check_command_stops_on_a_missing_package(monkeypatch):
    not_installed(monkeypatch, "redis")
    with override_settings(TASKS_Q={"BROKER_URL": "redis://localhost:6379/0"}):
        with pytest.raises(SystemCheckError, match=r'pip install "django-tasks-q\[redis\]"'):
            call_command("check")


def test_a_web_process_that_skipped_the_checks_gets_the_same_message(monkeypatch):
    from django_tasks_q.broker.connection import new_connection
    from django_tasks_q.exceptions import ImproperlyConfigured

    not_installed(monkeypatch, "redis")
    with pytest.raises(ImproperlyConfigured, match=r"redis://:\*\*@h:6379/0 needs the Python package 'redis'.*"
                                                   r'pip install "django-tasks-q\[redis\]"'):
        new_connection("redis://:secret@h:6379/0")


@pytest.mark.parametrize(("url", "suggestion"), [("reddis://h:6379/0", "'redis://'"), ("amqpp://h//", "'amqp://'"),
                                                 ("djagno://", "'django://'")])
def test_a_misspelt_broker_scheme_gets_the_closest_one(url, suggestion):
    errors = errors_for({"BROKER_URL": url})
    assert [e.id for e in errors] == ["django_tasks_q.E003"]
    assert "BROKER_URL" in errors[0].msg and errors[0].hint.startswith(f"did you mean {suggestion}?")


def test_the_framework_backend_without_django_tasks_is_named(monkeypatch):
    from django_tasks_q.checks import check_framework_backend

    assert check_framework_backend() == []  # testproject.settings.TASKS uses our backend; django-tasks installed
    with override_settings(TASKS={"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}):
        with pytest.MonkeyPatch.context() as hidden:
            not_installed(hidden, "django.tasks", "django_tasks")
            assert check_framework_backend() == []  # not our backend: not our business
    not_installed(monkeypatch, "django.tasks", "django_tasks")
    errors = check_framework_backend()
    assert [e.id for e in errors] == ["django_tasks_q.E012"]
    assert "TaskQBackend" in errors[0].msg and 'pip install "django-tasks-q[tasks]"' in errors[0].hint


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_sqlite_without_immediate_transactions_is_warned_about(settings):
    from django_tasks_q.checks import check_sqlite_transaction_mode

    assert check_sqlite_transaction_mode() == []  # testproject: IMMEDIATE
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3", "OPTIONS": {}}
    startproject = {**database, "OPTIONS": {}}  # what django-admin startproject writes
    settings.DATABASES = {**settings.DATABASES, "default": startproject}
    warnings = check_sqlite_transaction_mode()
    assert [w.id for w in warnings] == ["django_tasks_q.W002"]
    assert "DATABASES['default']" in warnings[0].msg and "database is locked" in warnings[0].msg
    assert '"transaction_mode": "IMMEDIATE"' in warnings[0].hint


@pytest.mark.parametrize("key", ["SIGNING_MAX_AGE", "MAX_MESSAGE_BYTES", "MAX_HEADER_COUNT"])
def test_message_limits_must_be_positive_or_none(key):
    for bad in (0, -1):
        errors = errors_for({key: bad})
        assert [e.id for e in errors] == ["django_tasks_q.E008"], bad
        assert key in errors[0].msg and "positive" in errors[0].msg
    assert errors_for({key: None}) == []
