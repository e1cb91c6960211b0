"""The sdist and the wheel, built once for the whole run (see ``dists.py``)."""

from __future__ import annotations

import os

import pytest

from . import dists as _dists


@pytest.fixture(scope="session")
def dists(tmp_path_factory) -> _dists.Dists:
    """The built sdist and wheel; under ``pytest -n`` the processes share one build."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # pytest-N/, the parent of every process's popen-gwN/
    return _dists.built(shared)


def pytest_collection_modifyitems(items):
    """``-m "not install"`` leaves the install tests out (they build, and pip installs into new virtualenvs)."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.install)
