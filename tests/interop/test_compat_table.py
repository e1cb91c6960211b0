"""The compatibility table in docs/migrating.md names only tests that exist.

Each row's last cell lists ``file.py::test_name`` references. A row that
says "yes" or "partial" in a direction must name at least one test, and every
named test must be a test function (at module level or in a ``Test*`` class) of that
file in tests/interop -- read with ``ast``, so the check does not import or
run anything.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "migrating.md"


def table_rows() -> list[list[str]]:
    text = DOC.read_text()
    section = text.split("## Compatibility with Celery", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| feature")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def defined_tests(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            names.add(node.name)
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {f.name for f in node.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    return names


def test_every_yes_names_tests_that_exist():
    rows = table_rows()
    assert len(rows) >= 15
    missing, unproven = [], []
    for feature, to_us, to_celery, tests in rows:
        assert {to_us, to_celery} <= {"yes", "partial", "no", "not tested", "n/a"}, f"row {feature!r}: unknown cell"
        references = re.findall(r"`([\w.]+\.py)::(\w+)`", tests)
        if {"yes", "partial"} & {to_us, to_celery} and not references:
            unproven.append(feature)
        for filename, name in references:
            module = Path(__file__).parent / filename
            if not module.is_file() or name not in defined_tests(module):
                missing.append(f"{filename}::{name}")
    assert not unproven, f"rows that say yes without a test: {unproven}"
    assert not missing, f"tests named in docs/migrating.md that do not exist: {missing}"
