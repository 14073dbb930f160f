"""The package's layering, read from the source with ``ast`` (nothing is imported).

* no module of ``diffinv.bench`` imports a private name (leading underscore) of another diffinv
  module, by ``from X import _name`` or as ``module._name`` of an imported module;
* the modules of ``diffinv.bench`` import each other without a cycle;
* ``diffinv.learn`` and ``diffinv.guidance`` (lower layers) never import ``diffinv.bench``, and
  ``diffinv.guidance`` never imports ``diffinv.learn`` (the training loops sit above the
  energies they train).

An import is any ``import`` statement, at module level or inside a function (a lazy import is
still a dependency), and ``importlib.import_module("literal")``; imports under ``if
TYPE_CHECKING:`` do not count. ``from package import name`` depends on ``package.name`` when that
is a module, on ``package`` otherwise. The implicit import of a module's parent package (Python
runs ``package/__init__.py`` first) is not an edge: every package that re-exports its submodules
would otherwise be a cycle.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted((SRC / "diffinv").rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module depended on
    name: str | None  # the name taken from it (``from target import name``), or None
    line: int


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module named by a (possibly relative) ``from ... import``."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str):
        self.module = module
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> diffinv module it is bound to
        self.attributes: list[tuple[str, str, int]] = []  # (local name, attribute, line)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(Import(self.module, alias.name, None, node.lineno))
            if alias.asname:
                self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, node)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:
                self.imports.append(Import(self.module, sub, None, node.lineno))
                self.aliases[alias.asname or alias.name] = sub
            else:
                self.imports.append(Import(self.module, base, alias.name, node.lineno))

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        named = ((isinstance(f, ast.Attribute) and f.attr == "import_module")
                 or (isinstance(f, ast.Name) and f.id == "import_module"))
        if (named and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            self.imports.append(Import(self.module, node.args[0].value, None, node.lineno))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name):
            self.attributes.append((node.value.id, node.attr, node.lineno))
        self.generic_visit(node)


def _collect(module: str) -> _Collector:
    c = _Collector(module)
    c.visit(ast.parse(MODULES[module].read_text(encoding="utf-8"), str(MODULES[module])))
    return c


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(SRC.parent)}:{line}"


def private_imports(package: str) -> list[str]:
    """Every use, in a module of ``package``, of a private name of another diffinv module."""
    found = []
    for module in (m for m in MODULES if _in(m, package)):
        c = _collect(module)
        for imp in c.imports:
            if (imp.name and _private(imp.name) and _in(imp.target, "diffinv")
                    and imp.target != module):
                found.append(f"{_where(module, imp.line)}: from {imp.target} import {imp.name}")
        for local, attr, line in c.attributes:
            target = c.aliases.get(local)
            if target and target != module and _private(attr) and _in(target, "diffinv"):
                found.append(f"{_where(module, line)}: {local}.{attr} ({target}.{attr})")
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports."""
    graph: dict[str, set[str]] = {}
    for module in (m for m in MODULES if _in(m, package)):
        graph[module] = {i.target for i in _collect(module).imports
                         if _in(i.target, package) and i.target in MODULES and i.target != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module
    (Tarjan), for a readable failure."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for comp in components:  # the shortest way from the component's first module back to it
        members, start = set(comp), min(comp)
        came_from: dict[str, str] = {}
        queue, last = deque([start]), None
        while last is None:
            v = queue.popleft()
            for w in sorted(graph[v] & members):
                if w == start:
                    last = v
                    break
                if w not in came_from:
                    came_from[w] = v
                    queue.append(w)
        path = [last]
        while path[-1] != start:
            path.append(came_from[path[-1]])
        cycles.append(path[::-1] + [start])
    return cycles


# ------------------------------------------------------------------------------------------ tests
def test_the_source_tree_is_found():
    assert "diffinv.bench.jobs" in MODULES and "diffinv.bench.kinds.restore" in MODULES


def test_no_bench_module_uses_a_private_name_of_another_module():
    found = private_imports("diffinv.bench")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_bench_modules_import_each_other_without_a_cycle():
    cycles = find_cycles(import_graph("diffinv.bench"))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(("lower", "upper"), [("diffinv.learn", "diffinv.bench"),
                                              ("diffinv.guidance", "diffinv.bench"),
                                              ("diffinv.guidance", "diffinv.learn")])
def test_a_lower_layer_never_imports_a_higher_one(lower, upper):
    found = list(dict.fromkeys(f"{_where(i.source, i.line)}: imports {i.target}"
                               for m in MODULES if _in(m, lower)
                               for i in _collect(m).imports if _in(i.target, upper)))
    assert not found, f"{lower} imports {upper}:\n" + "\n".join(found)


# ------------------------------------------------------------------ the checker checks itself
def test_the_checker_sees_private_names_cycles_and_type_checking(tmp_path, monkeypatch):
    pkg = tmp_path / "diffinv" / "toy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from diffinv.toy.b import helper, _secret\n")
    (pkg / "b.py").write_text("import importlib\n\ndef f():\n"
                              "    importlib.import_module('diffinv.toy.c')\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nfrom . import d\n"
                              "if TYPE_CHECKING:\n    from diffinv.toy import a\n"
                              "else:\n    import diffinv.toy.b as bee\n\nbee._hidden\n")
    (pkg / "d.py").write_text("from ..toy import a\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    modules = {_module_name(p): p for p in sorted((tmp_path / "diffinv").rglob("*.py"))}
    monkeypatch.setitem(globals(), "MODULES", modules)

    found = private_imports("diffinv.toy")
    assert len(found) == 2
    assert "from diffinv.toy.b import _secret" in found[0] and "bee._hidden" in found[1]
    graph = import_graph("diffinv.toy")
    assert graph["diffinv.toy.a"] == {"diffinv.toy.b"}
    assert graph["diffinv.toy.b"] == {"diffinv.toy.c"}  # importlib with a literal name
    assert graph["diffinv.toy.c"] == {"diffinv.toy.d", "diffinv.toy.b"}  # not the TYPE_CHECKING a
    assert graph["diffinv.toy.d"] == {"diffinv.toy.a"}  # relative import resolved
    cycles = find_cycles(graph)
    assert len(cycles) == 1 and cycles[0][0] == cycles[0][-1]
    assert set(cycles[0]) == {"diffinv.toy.a", "diffinv.toy.b", "diffinv.toy.c", "diffinv.toy.d"}
    del graph["diffinv.toy.d"]
    assert find_cycles(graph) == [["diffinv.toy.b", "diffinv.toy.c", "diffinv.toy.b"]]
