"""The result backends stand below the worker: nothing under ``django_tasks_q/results/`` imports
``django_tasks_q.worker``, at module level or inside a function (read from the source with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

import django_tasks_q

PACKAGE = Path(django_tasks_q.__file__).parent
RESULTS = PACKAGE / "results"


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """Every name ``source`` (a module of ``package``) imports, anywhere in it, absolute, with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # "from .. import worker" names the package in the alias, not in the module
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def test_imports_are_found_at_any_depth_and_made_absolute():
    source = ("import json\nfrom .redis import group_key\n"
              "def f():\n    from ..worker.chords import x\n    from .. import worker\n"
              "    import django_tasks_q.worker.workflow\n")
    assert imported_modules(source, "django_tasks_q.results") == [
        (1, "json"), (2, "django_tasks_q.results.redis.group_key"), (4, "django_tasks_q.worker.chords.x"),
        (5, "django_tasks_q.worker"), (6, "django_tasks_q.worker.workflow")]


def test_no_results_module_imports_the_worker():
    offending = []
    for path in sorted(RESULTS.glob("*.py")):
        for line, name in imported_modules(path.read_text(), "django_tasks_q.results"):
            if name == "django_tasks_q.worker" or name.startswith("django_tasks_q.worker."):
                offending.append(f"results/{path.name}:{line} imports {name}")
    assert offending == []
