"""The layout stays readable: modules import, no import circles, serving apart from tooling, the stages
without Kafka, small modules, and a README settings table generated from the code."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from worker.settings import markdown_table

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "engines", "schemas", "ops")
TOOLING = ("engines.training", "engines.export", "engines.pretrained")
KAFKA_CLIENTS = ("faust", "aiokafka", "kafka")
MAX_LINES = 400  # a longer module says why in its opening docstring ("long because …")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
    if "migrations" not in path.parts  # Alembic scripts, run by Alembic, not imported
}


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


def project_imports(name: str, *, module_level: bool) -> set[str]:
    """Our modules that `name` imports (explicitly; a package's parents are not counted)."""
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
            # `from pkg.x import y` imports the module pkg.x.y when there is one.
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


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))  # those run on import
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)  # backends import their runtimes lazily, so this needs no GPU


@pytest.mark.parametrize("module_level", [True, False], ids=["module-level", "with-deferred"])
def test_imports_are_acyclic(module_level: bool) -> None:
    """No cycle among module-level imports, nor when imports deferred into functions count too."""
    graph = {name: project_imports(name, module_level=module_level) for name in MODULES}
    assert sum(map(len, graph.values())) > 50  # the parser found the imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_serving_never_imports_tooling() -> None:
    """What the worker runs (engines.serving, engines.modeling, the worker's stages) never pulls in training
    or export code, not even in a function body."""
    runtime = [name for name in MODULES if name.startswith(("engines", "worker.stages")) and not name.startswith(TOOLING)]
    offending = {
        name: sorted(t for t in project_imports(name, module_level=False) if t.startswith(TOOLING)) for name in runtime
    }
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_stages_do_not_know_kafka() -> None:
    """The stages are functions over data; only the drivers in worker.entrypoints read and write topics."""
    for name in (n for n in MODULES if n.startswith("worker.stages")):
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            assert not [m for m in modules if m.split(".")[0] in KAFKA_CLIENTS], f"{name} imports {modules}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small_or_say_why(name: str) -> None:
    text = MODULES[name].read_text(encoding="utf-8")
    lines = text.count("\n")
    docstring = (ast.get_docstring(ast.parse(text)) or "").lower()
    assert lines <= MAX_LINES or "long because" in docstring, f"{name} has {lines} lines; split it or say why"


def test_readme_settings_table_is_generated_from_the_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- settings:start (python -m worker.settings) -->\n", "\n<!-- settings:end -->"
    assert start in readme and end in readme, "the README lost its generated settings table"
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), "README settings drifted: paste the output of `python -m worker.settings`"
