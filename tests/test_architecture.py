"""The module graph of distx: no import cycle, hidden or not, and imports only downward.

Every import of a distx module counts: at module level, inside functions, and under
`if TYPE_CHECKING:`. Layers, top to bottom (README "How it works" shows the graph):

    distx (the package, for `distx.load`), __main__ > cli > bench, launch > check > engine
    > results > script > vocabulary, errors, version, host, lazy

A module may import a module of a lower layer, or of its own package (the package's own
modules must then form a DAG); bench and launch do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src"

LAYERS = [
    ("distx", "distx.__main__"),
    ("distx.cli",),
    ("distx.bench", "distx.launch"),
    ("distx.check",),
    ("distx.engine",),
    ("distx.results",),
    ("distx.script",),
    ("distx.vocabulary", "distx.errors", "distx.version", "distx.host", "distx.lazy"),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, known: set[str]) -> set[str]:
    """Every distx module `path` imports, wherever the import statement stands."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {module for module in found if module in known and module != name}


def module_graph(root: Path) -> dict[str, set[str]]:
    paths = sorted((root / "distx").rglob("*.py"))
    known = {module_name(path, root) for path in paths}
    return {module_name(path, root): imports_of(path, root, known) for path in paths}


def group_of(module: str) -> str:
    """The layer entry a module belongs to (its package, or itself at the top level)."""
    entries = [entry for layer in LAYERS for entry in layer]
    return max((entry for entry in entries
                if module == entry or module.startswith(entry + ".")), key=len)


def layer_of(module: str) -> int:
    group = group_of(module)
    return next(index for index, layer in enumerate(LAYERS) if group in layer)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in graph.items():
        for target in imported:
            same_group = group_of(module) == group_of(target)
            if not same_group and layer_of(target) <= layer_of(module):
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return module_graph(SOURCE)


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_only_go_down(graph):
    assert upward_imports(graph) == []


def test_the_checks_see_hidden_imports(tmp_path):
    """A cycle closed only by an import inside a function or under TYPE_CHECKING counts,
    and so does an import up through the layers."""
    package = tmp_path / "distx"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine" / "__init__.py").write_text("")
    (package / "engine" / "a.py").write_text("from distx.engine import b\n")
    (package / "engine" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from distx.engine.a import x\n")
    (package / "errors.py").write_text("def f():\n    from distx.engine import a\n")
    graph = module_graph(tmp_path)
    assert find_cycle(graph) == ["distx.engine.a", "distx.engine.b", "distx.engine.a"]
    assert upward_imports(graph) == ["distx.errors -> distx.engine.a"]
