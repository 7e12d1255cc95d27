"""engines/ layout: every module imports, module-level imports form no cycle, serving never reaches tooling."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "engines"
TOOLING = ("engines.training", "engines.export")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(body: list[ast.stmt], *, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements in body. module_level: only those that run when the module is imported
    (not in functions, nor under `if TYPE_CHECKING:`); class bodies run, so they count."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif module_level and isinstance(node, ast.If) and _is_type_checking(node):
            found += _import_nodes(node.orelse, module_level=module_level)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    found += _import_nodes([c for c in children if isinstance(c, ast.AST)], module_level=module_level)
    return found


def engines_imports(name: str, *, module_level: bool) -> set[str]:
    """The engines modules that `name` imports (explicitly; a package's parents are not counted)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")).body, module_level=module_level):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from engines.x import y` imports the module engines.x.y when there is one.
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        targets |= {c for c in candidates if c in MODULES and c != name}
    return targets


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in graph as a list of nodes (first == last), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)  # backends import their runtimes lazily, so this needs no GPU


@pytest.mark.parametrize("module_level", [True, False], ids=["module-level", "with-deferred"])
def test_imports_are_acyclic(module_level: bool) -> None:
    """No cycle among module-level imports, nor when imports deferred into functions count too
    (export.py and tensorrt_backend.py used to import each other that way)."""
    graph = {name: engines_imports(name, module_level=module_level) for name in MODULES}
    assert sum(map(len, graph.values())) > 20  # the parser found the imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_serving_never_imports_tooling() -> None:
    """Run time (the package root, engines.modeling and engines.serving) must not pull in training or
    export code, not even in a function body."""
    runtime = [name for name in MODULES if not name.startswith(TOOLING)]
    offending = {
        name: sorted(t for t in engines_imports(name, module_level=False) if t.startswith(TOOLING)) for name in runtime
    }
    assert {name: targets for name, targets in offending.items() if targets} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it or say in its docstring why not (and here)"
