"""The layers, read from the code: imports run server -> schema -> registry, and the domain's own
modules import one another without a circle (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("server", "schema", "registry")
# What each layer may not import: the layers above it, and for the domain every transport.
FORBIDDEN = {
    "registry": ("server", "schema", "aiohttp", "strawberry", "graphql", "jwt"),
    "schema": ("server", "aiohttp", "jwt"),
    "server": (),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Return the modules a file imports (outside `if TYPE_CHECKING:` blocks), fully qualified."""
    tree = ast.parse(path.read_text())
    package = (
        module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    )
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                )
            found.add(base)
            # `from registry import kpis` imports the module registry.kpis
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules(layer: str) -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted((ROOT / layer).rglob("*.py"))}


@pytest.mark.parametrize("layer", LAYERS)
def test_no_import_runs_back_up_or_reaches_a_transport_from_the_domain(layer: str) -> None:
    wrong = [
        f"{module} imports {name}"
        for module, names in modules(layer).items()
        for name in names
        for banned in FORBIDDEN[layer]
        if name == banned or name.startswith(banned + ".")
    ]
    assert wrong == []


def test_the_domain_has_no_import_circle() -> None:
    graph = modules("registry")
    edges = {
        module: {name for name in names if name in graph and name != module}
        for module, names in graph.items()
    }
    # A package's __init__ is imported with any of its modules; it is not an arrow of theirs.
    packages = {m for m in graph if (ROOT / m.replace(".", "/") / "__init__.py").exists()}
    for module in edges:
        edges[module] -= packages
    circle = find_circle(edges)
    assert circle is None, " -> ".join(circle or [])


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """Return one circle of the directed graph, or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_circle_finder_finds_a_circle() -> None:
    # The control: the check above could not pass by never finding anything.
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_sees_every_spelling() -> None:
    found = imports_of(ROOT / "registry" / "kpis.py")
    assert {"registry.compute", "registry.rows", "registry.model"} <= found
