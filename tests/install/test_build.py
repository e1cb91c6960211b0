"""The sdist and the wheel: ``twine check`` passes and each carries its data files."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile

from .dists import ROOT


def names_in_sdist(path) -> set[str]:
    with tarfile.open(path) as archive:
        # drop the leading "django_tasks_q-0.1.0/"
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def names_in_wheel(path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return set(archive.namelist())


def package_files(*patterns: str) -> set[str]:
    return {path.relative_to(ROOT).as_posix() for pattern in patterns for path in ROOT.glob(pattern)}


def test_twine_check_passes(dists):
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dists.sdist), str(dists.wheel)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"twine check failed:\n{done.stdout}\n{done.stderr}"


def test_sdist_carries_docs_templates_static_lua_and_py_typed(dists):
    names = names_in_sdist(dists.sdist)
    wanted = package_files("docs/*.md", "django_tasks_q/templates/**/*.html", "django_tasks_q/static/**/*.*",
                           "django_tasks_q/migrations/0*.py", "django_tasks_q/**/*.lua") | {
                               "django_tasks_q/py.typed", "README.md"}
    assert any(name.startswith("docs/") for name in wanted)
    assert any(name.startswith("django_tasks_q/static/") for name in wanted)
    assert "django_tasks_q/broker/transport/lua/take.lua" in wanted
    assert not wanted - names, f"missing from {dists.sdist.name}: {sorted(wanted - names)}"


def test_wheel_carries_templates_static_migrations_lua_and_py_typed(dists):
    names = names_in_wheel(dists.wheel)
    wanted = package_files("django_tasks_q/templates/**/*.html", "django_tasks_q/static/**/*.*",
                           "django_tasks_q/migrations/*.py", "django_tasks_q/**/*.lua") | {"django_tasks_q/py.typed"}
    assert any(name.startswith("django_tasks_q/migrations/0001") for name in wanted)
    assert "django_tasks_q/results/lua/quiet_write.lua" in wanted
    assert not wanted - names, f"missing from {dists.wheel.name}: {sorted(wanted - names)}"
    stray = sorted(name for name in names if name.split("/")[0] in ("tests", "testproject", "docs", "bench"))
    assert not stray, f"{dists.wheel.name} ships files that are not the package: {stray[:10]}"
