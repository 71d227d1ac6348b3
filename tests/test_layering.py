"""The import graph of docs/design.md §5: commands (`causalgr.cli`) above the library, no library
module importing typer or rich or the commands, and no import cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


MODULES = {_module_name(p): p for p in sorted((SRC / "causalgr").rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith("causalgr.cli")])
def test_library_modules_do_not_import_commands_or_terminal_libraries(module):
    bad = sorted(m for m in _imports(MODULES[module]) if m.split(".")[0] in ("typer", "rich") or m.startswith("causalgr.cli"))
    assert not bad, f"{module} imports {bad}: commands and terminal rendering belong in causalgr.cli"


def test_no_import_cycle():
    # A package's __init__ re-exporting its children is not a cycle of logic: drop package → child edges.
    graph = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
