"""Types: the package type-checks clean under mypy with django-stubs, and a task keeps its signature.

``tests/typing/calls.py`` is checked, not run: every line marked ``# E: ...``
must be reported with that message, and nothing else may be -- so a
``@task`` that lost its signature (every call accepted) fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CALLS = ROOT / "tests" / "typing" / "calls.py"


def mypy(*targets: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--config-file", "setup.cfg", *targets],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_package_and_the_typed_calls_check_as_expected():
    run = mypy("django_tasks_q", str(CALLS.relative_to(ROOT)))
    reported: dict[int, list[str]] = {}
    others = []
    for line in run.stdout.splitlines():
        found = re.match(r"(.+?):(\d+): error: (.*)", line)
        if found and Path(found[1]).name == CALLS.name:
            reported.setdefault(int(found[2]), []).append(found[3])
        elif found:
            others.append(line)
    assert not others, "mypy errors in the package:\n" + "\n".join(others)
    expected = {number: text.split("# E: ", 1)[1].strip()
                for number, text in enumerate(CALLS.read_text().splitlines(), start=1) if "# E: " in text}
    assert len(expected) == 5
    for number, message in expected.items():
        assert any(message in got for got in reported.get(number, [])), (
            f"calls.py:{number}: mypy did not report {message!r}; it said {reported.get(number)}\n{run.stdout}")
    unexpected = {number: got for number, got in reported.items() if number not in expected}
    assert not unexpected, f"mypy reported lines that should type-check: {unexpected}"
