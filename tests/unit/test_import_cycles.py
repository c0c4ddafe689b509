"""No import cycles among the `semflow` modules.

Function-level imports count too: moving an import into a function hides a cycle from the
interpreter at load time, but the two modules still depend on each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

from semflow.config import REPO_ROOT

SRC = REPO_ROOT / "src"


def _modules(src: Path) -> dict[str, Path]:
    out = {}
    for path in src.glob("semflow/**/*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The semflow modules `name` imports, anywhere in the file but `if TYPE_CHECKING:`.

    `from a.b import c` is an import of `a.b.c` when that is a module, else of `a.b`. The
    parent packages Python loads on the way are not counted: every submodule has those.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(mod: str) -> list[str] | None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[mod] = 2
        return None

    for mod in sorted(graph):
        if mod not in state and (found := visit(mod)):
            return found
    return None


def _graph(src: Path) -> dict[str, set[str]]:
    modules = _modules(src)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_semflow_has_no_import_cycles() -> None:
    graph = _graph(SRC)
    assert "semflow.index.base" in graph and "semflow.models.metrics" in graph
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_rule_sees_cycles_through_function_level_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "semflow" / "index"
    pkg.mkdir(parents=True)
    (tmp_path / "semflow" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from semflow.index.base import Store\n")
    (pkg / "base.py").write_text("def open_store():\n    from .edge import Edge\n")
    (pkg / "edge.py").write_text("from semflow.index import base\n")
    (pkg / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from semflow.index import edge\n"
    )
    graph = _graph(tmp_path)
    assert graph["semflow.index"] == {"semflow.index.base"}
    assert graph["semflow.index.typed"] == set()
    assert _cycle(graph) == ["semflow.index.base", "semflow.index.edge", "semflow.index.base"]
