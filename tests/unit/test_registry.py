"""The name -> task registry: default names, custom names, clashes, lookups."""

from __future__ import annotations

import pytest

from django_tasks_q import registry, task
from django_tasks_q.core.registry import Registry
from django_tasks_q.exceptions import ImproperlyConfigured, NotRegistered


def test_default_name_is_module_dot_function(clean_registry):
    @task
    def transcode(x):
        return x

    assert transcode.name == f"{__name__}.transcode"
    assert registry[f"{__name__}.transcode"] is transcode


def test_custom_name(clean_registry):
    @task(name="unit.custom_name")
    def whatever():
        return 1

    assert whatever.name == "unit.custom_name"
    assert registry["unit.custom_name"] is whatever
    assert f"{__name__}.whatever" not in registry


def test_same_name_from_a_different_function_is_refused(clean_registry):
    @task(name="unit.clash")
    def first():
        return 1

    with pytest.raises(ImproperlyConfigured) as excinfo:
        @task(name="unit.clash")
        def second():
            return 2

    message = str(excinfo.value)
    assert "'unit.clash'" in message
    assert "<locals>.first" in message and "<locals>.second" in message
    assert registry["unit.clash"] is first  # the first declaration is kept


def test_default_names_clash_for_two_functions_of_the_same_name(clean_registry):
    def declare_a():
        @task
        def job():
            return "a"
        return job

    def declare_b():
        @task
        def job():
            return "b"
        return job

    declare_a()
    with pytest.raises(ImproperlyConfigured, match="name="):
        declare_b()


def test_redeclaring_the_same_function_is_allowed(clean_registry):
    # Module reloads (runserver autoreload, importlib.reload) re-run @task.
    def job():
        return 1

    first = task(name="unit.reloaded")(job)
    second = task(name="unit.reloaded")(job)
    assert registry["unit.reloaded"] is second
    assert first is not second


def test_unknown_name_is_not_registered_with_a_close_match_hint():
    with pytest.raises(NotRegistered) as excinfo:
        registry["testproject.videos.tasks.ad"]
    message = str(excinfo.value)
    assert "'testproject.videos.tasks.ad'" in message
    assert "did you mean 'testproject.videos.tasks.add'?" in message


def test_unknown_name_without_a_close_match_has_no_hint():
    with pytest.raises(NotRegistered) as excinfo:
        registry["zzzz"]
    assert "did you mean" not in str(excinfo.value)
    assert "INSTALLED_APPS" in str(excinfo.value)


def test_not_registered_is_a_key_error_with_a_readable_str():
    empty = Registry()
    with pytest.raises(KeyError) as excinfo:
        empty["x"]
    assert str(excinfo.value).startswith("no task named 'x'")  # not KeyError's quoted repr
    assert empty.get("x") is None


def test_demo_tasks_are_autodiscovered():
    from testproject.reports.tasks import build_report
    from testproject.videos.tasks import add

    assert "testproject.videos.tasks.add" in registry
    assert "reports.build" in registry
    assert registry["testproject.videos.tasks.add"] is add
    assert registry["reports.build"] is build_report
    assert "testproject.reports.tasks.build_report" not in registry


def test_names_are_sorted_and_hide_internal_tasks(clean_registry):
    @task(name="django_tasks_q.unit_internal")
    def internal():
        pass

    names = registry.names()
    assert names == sorted(names)
    assert "django_tasks_q.unit_internal" not in names
    assert "django_tasks_q.unit_internal" in registry.names(include_internal=True)
    assert len(registry) == len(registry.names(include_internal=True))


def test_unregister(clean_registry):
    @task(name="unit.gone")
    def gone():
        pass

    registry.unregister("unit.gone")
    assert "unit.gone" not in registry
    registry.unregister("unit.gone")  # unknown names are ignored
