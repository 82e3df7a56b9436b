"""The architecture rules of docs/architecture.md that are not import-linter contracts: no import cycle between
glfuse's top-level modules (systems, services, foundation) and no function in src/ longer than 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "glfuse"
MAX_FUNCTION_LINES = 80


def _top(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_top_level_modules():
    grimp = pytest.importorskip("grimp")  # installed with import-linter (the test extra)
    graph = grimp.build_graph("glfuse")
    edges: dict[str, set[str]] = {}
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            a, b = _top(m), _top(imported)
            if a != b and a != "glfuse" and b != "glfuse":
                edges.setdefault(a, set()).add(b)
    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(edges.get(start, ()))
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += edges.get(m, ())
        return seen

    in_cycle = sorted(m for m in edges if m in reachable(m))
    assert not in_cycle, f"modules on an import cycle: {in_cycle}"


def test_no_function_over_80_lines():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
