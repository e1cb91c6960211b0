"""The package's import graph (ARCHITECTURE.md, "Layers"): no module imports one of a higher tier, and
no modules import each other in a cycle.

Every import counts, at module level or inside a function, except those under ``if TYPE_CHECKING:``.
A cycle is a set of modules each of which reaches the others. The cycles and upward imports that exist
are listed below with the reason; a new one fails here, and so does one that is gone (take it off the
list: the ratchet only turns one way).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent.parent / "django_tasks_q"

#: cycle -> why it is still there
KNOWN_CYCLES: dict[frozenset[str], str] = {
    frozenset({"core.task", "worker.eager", "worker.executor"}):
        "on purpose: eager mode runs the worker's own executor ladder",
}


#: The tiers of ARCHITECTURE.md's diagram, lowest first: (name, module prefixes). A module is in the tier of
#: its longest matching prefix; ``models`` (imported by every tier, as Django apps do) is in none.
TIERS: list[tuple[str, tuple[str, ...]]] = [
    ("message", ("core.protocol", "core.options", "core.states", "core.routing", "core.registry", "core.signing",
                 "core.message_signing", "core.wire_values", "core.context", "core.aio", "core", "conf",
                 "exceptions", "masking", "lua", "resp", "loops", "signals", "compat", "extras", "log")),
    ("calls and stores", ("core.", "broker", "results")),
    ("worker", ("worker",)),
    ("surfaces", ("beat", "admin", "web", "contrib", "management", "inspection", "eventreceiver", "eventstore",
                  "backends", "apps", "checks", "urls")),
]
#: module -> module of a higher tier it imports, and why
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    ("core.task", "worker.eager"): "on purpose: eager mode runs the worker's own executor ladder",
}


def tier_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, tier)
    for number, (_name, prefixes) in enumerate(TIERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix if prefix.endswith(".") else prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), number)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``name`` is its dotted name inside the package)."""
    tree = ast.parse(path.read_text())
    type_checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_parts[:len(package_parts) - (node.level - 1)] + (
                    node.module.split(".") if node.module else [])
                base = ".".join(base_parts)
            else:
                if not (node.module or "").startswith("django_tasks_q"):
                    continue
                base = node.module.removeprefix("django_tasks_q").lstrip(".")
            targets = [base] + [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            target = target.removeprefix("django_tasks_q.") if target.startswith("django_tasks_q.") else target
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:  # "" is the package itself: its __init__ re-exports the public API
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}
    modules = set(paths) - {""}
    return {name: imports_of(paths[name], name, modules) for name in modules}


def import_cycles() -> set[frozenset[str]]:
    graph = import_graph()
    modules = set(graph)
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: set[frozenset[str]] = set()
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.add(frozenset(component))
    return cycles


def test_no_import_cycle_but_the_known_ones():
    cycles = import_cycles()
    new = [sorted(cycle) for cycle in cycles - set(KNOWN_CYCLES)]
    gone = [sorted(cycle) for cycle in set(KNOWN_CYCLES) - cycles]
    assert not new, f"import cycles not on KNOWN_CYCLES (break them, see ARCHITECTURE.md): {new}"
    assert not gone, f"cycles on KNOWN_CYCLES that are gone: take them off the list: {gone}"


def test_every_module_has_a_tier_and_imports_none_above_it():
    graph = import_graph()
    untiered = sorted(name for name in graph if tier_of(name) is None and name.split(".")[0] != "models")
    assert not untiered, f"modules in no tier of TIERS (add them where ARCHITECTURE.md draws them): {untiered}"
    upward = {(name, target) for name, targets in graph.items() for target in targets
              if None not in (tier_of(name), tier_of(target)) and tier_of(target) > tier_of(name)}  # type: ignore[operator]
    assert not upward - set(KNOWN_UPWARD), f"imports of a higher tier: {sorted(upward - set(KNOWN_UPWARD))}"
    assert not set(KNOWN_UPWARD) - upward, f"gone: take them off KNOWN_UPWARD: {sorted(set(KNOWN_UPWARD) - upward)}"


def test_tiers_place_modules_by_their_longest_prefix():
    assert [tier_of(name) for name in ("core.protocol", "core.calling", "core", "results.redis", "worker.pools.solo",
                                       "web.api", "conf", "models.beat")] == [0, 1, 0, 1, 2, 3, 0, None]


def test_the_cycle_finder_sees_a_cycle(tmp_path, monkeypatch):
    """The finder itself: two modules importing each other, one inside a function, are a cycle; an import
    under TYPE_CHECKING is not."""
    package = tmp_path / "django_tasks_q"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("def f():\n    from . import b\n")
    (package / "core" / "b.py").write_text("from django_tasks_q.core import a\n")
    (package / "core" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from .a import f\nfrom . import a\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", package)
    assert import_cycles() == {frozenset({"core.a", "core.b"})}
