"""The floors setup.cfg declares are the versions ``make test-lowest`` tests (constraints/lowest.txt).

A floor raised in one file and not the other would claim support for versions no test ran on.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent.parent


def declared_floors() -> dict[str, Version]:
    """``name -> lowest version`` from install_requires and the extras users install (not test/bench/dev)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    extras = config["options.extras_require"]
    for extra in ("redis", "amqp", "postgres", "gevent", "tasks"):
        lines += extras[extra].splitlines()
    floors = {}
    for line in filter(None, (line.strip() for line in lines)):
        requirement = Requirement(line)
        lows = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        if lows:
            floors[requirement.name.lower()] = max(lows)
    return floors


def lowest_pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version)
    return pins


def test_every_floor_of_the_range_tests_is_the_declared_floor():
    floors, pins = declared_floors(), lowest_pins()
    # celery is only a test dependency: Celery 5.5 is the oldest that shares a virtualenv (kombu 5.5)
    missing = sorted(set(pins) - set(floors) - {"celery"})
    assert not missing, f"constraints/lowest.txt pins {missing}, which setup.cfg declares no floor for"
    differ = {name: (str(floors[name]), str(pin)) for name, pin in pins.items()
              if name in floors and floors[name] != pin}
    assert not differ, f"setup.cfg floor vs constraints/lowest.txt pin: {differ}; raise both together"


def test_the_range_tests_pin_every_runtime_floor():
    """Every floor of the core install and of the broker extras is tested (psycopg and gevent are tested at
    whatever version resolves)."""
    unpinned = sorted(set(declared_floors()) - set(lowest_pins()) - {"psycopg", "gevent"})
    assert not unpinned, f"setup.cfg declares floors constraints/lowest.txt does not test: {unpinned}"
