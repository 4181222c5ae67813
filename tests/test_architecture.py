"""The import rules of ARCHITECTURE.md, checked from the code so that they stay true.

Rooms: ``inference`` (the model), ``dicom_mapping`` (DICOM <-> model inputs and results),
``node`` (networking, spool, jobs), ``training``; ``medversa.cli`` is the command-line root and
``medversa.benchmarks`` the harness. Every import statement counts, also one inside a function
(an import moved into a function to dodge a cycle is still a dependency).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = {"inference": "inference", "dicom_mapping": "dicom_mapping", "node": "node", "training": "training"}

#: Which rooms each room may import (through the other room's package only).
MAY_IMPORT: dict[str, set[str]] = {
    "inference": set(),
    "dicom_mapping": {"inference"},
    "node": {"inference", "dicom_mapping"},
    "training": {"inference"},
}
#: Third-party packages a room must not know (ARCHITECTURE.md, "it must not know").
MUST_NOT_USE: dict[str, set[str]] = {
    "inference": {"pydicom", "pynetdicom", "highdicom", "celery"},
    "dicom_mapping": {"pynetdicom", "celery", "torch"},
    "node": set(),
    "training": {"pynetdicom", "celery"},
}


def _module_name(path: Path, room: str) -> str:
    rel = path.relative_to(REPO / ROOMS[room]).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["medversa", room, *parts])


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from package import module` names a module too: count it as an edge to that module.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _exports(room: str) -> set[str]:
    """The names in a room's ``__all__``: a module listed there (``header``) is exported on purpose."""
    tree = ast.parse((REPO / ROOMS[room] / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return {elt.value for elt in ast.walk(node.value) if isinstance(elt, ast.Constant)}
    return set()


def _room_files() -> dict[str, list[Path]]:
    return {room: sorted((REPO / folder).rglob("*.py")) for room, folder in ROOMS.items()}


def _all_modules() -> dict[str, Path]:
    return {_module_name(p, room): p for room, files in _room_files().items() for p in files}


def test_rooms_import_only_what_architecture_allows_and_only_through_packages() -> None:
    problems: list[str] = []
    modules = _all_modules()
    for room, files in _room_files().items():
        for path in files:
            for line, target in _imports(path, _module_name(path, room)):
                where = f"{path.relative_to(REPO)}:{line}"
                top = target.split(".")[0]
                if top in MUST_NOT_USE[room]:
                    problems.append(f"{where} uses {top}, which {room} must not know")
                # `from medversa import x` reaches into the CLI root's package as much as medversa.cli does.
                if target == "medversa" or target.startswith(("medversa.cli", "medversa.benchmarks")):
                    problems.append(f"{where} imports {target}: no room imports the CLI root or the harness")
                parts = target.split(".")
                if len(parts) < 2 or parts[0] != "medversa" or parts[1] not in ROOMS or parts[1] == room:
                    continue
                other = parts[1]
                if other not in MAY_IMPORT[room]:
                    problems.append(f"{where} imports {target}: {room} may not import {other}")
                elif len(parts) > 2 and ".".join(parts) in modules and parts[2] not in _exports(other):
                    problems.append(f"{where} reaches into {target}: import it from medversa.{other}")
    assert not problems, "\n".join(problems)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules() -> None:
    """A package's ``__init__`` re-exports its modules, so edges into an ``__init__`` are left out:
    a cycle through a re-export is not a design cycle; one between two modules is."""
    modules = _all_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        if path.name == "__init__.py":
            continue
        for _, target in _imports(path, name):
            if target in modules and target != name and modules[target].name != "__init__.py":
                graph[name].add(target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_exports_what_others_use(room: str) -> None:
    init = REPO / ROOMS[room] / "__init__.py"
    tree = ast.parse(init.read_text())
    exported = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
    used_elsewhere = any(f"medversa.{room}" in target for other, files in _room_files().items() if other != room
                         for path in files for _, target in _imports(path, _module_name(path, other)))
    if used_elsewhere:
        assert exported, f"medversa.{room} is used by other rooms but declares no __all__"
