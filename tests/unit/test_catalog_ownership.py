"""The catalog owns its tables: no semflow module but catalog.py imports its schema objects
or opens connections and transactions on its engine; the others call Catalog's methods."""

from __future__ import annotations

import ast
from pathlib import Path

import sqlalchemy as sa

from semflow import catalog as catalog_module
from semflow.config import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "semflow"
OWNER = PACKAGE / "catalog.py"
# Schema objects: the tables, their metadata, and anything else of SQLAlchemy's kind there.
SCHEMA = {
    name
    for name, value in vars(catalog_module).items()
    if isinstance(value, sa.Table | sa.MetaData | sa.Engine)
} | {"engine"}


def _name(node: ast.AST) -> str:
    """The last identifier of `a`, `a.b`, `a().b` (what a catalog variable is called)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


def _module_aliases(tree: ast.AST) -> set[str]:
    """Names the file binds to the semflow.catalog module (`from semflow import catalog as c`)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "semflow":
            out |= {a.asname or a.name for a in node.names if a.name == "catalog"}
        elif isinstance(node, ast.Import):
            out |= {a.asname for a in node.names if a.name == "semflow.catalog" and a.asname}
    return out


def _is_catalog(node: ast.AST, aliases: set[str]) -> bool:
    """A catalog object or the catalog module, by the names the code base gives them."""
    name = _name(node)
    return (
        name in aliases
        or name.lower() in ("cat", "catalog_module")
        or name.lower().endswith("catalog")
    )


def _violations(path: Path, root: Path = REPO_ROOT) -> list[str]:
    out: list[tuple[int, str]] = []
    rel = path.relative_to(root)
    tree = ast.parse(path.read_text(), str(path))
    aliases = _module_aliases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "semflow.catalog":
            out += [
                (node.lineno, f"{rel}:{node.lineno} imports {a.name} from semflow.catalog")
                for a in node.names
                if a.name in SCHEMA or a.name.startswith("_")
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in SCHEMA
            and _is_catalog(node.value, aliases)
        ):
            out.append((node.lineno, f"{rel}:{node.lineno} uses {ast.unparse(node)}"))
    return [v for _, v in sorted(out)]


def test_the_schema_names_are_found() -> None:
    # A rename in catalog.py must not leave this test checking for nothing.
    assert {"documents", "runs", "metadata", "engine"} <= SCHEMA


def test_only_the_catalog_touches_its_tables_and_engine() -> None:
    found = [v for p in sorted(PACKAGE.rglob("*.py")) if p != OWNER for v in _violations(p)]
    assert found == [], "use Catalog's methods instead:\n" + "\n".join(found)


def test_the_walk_catches_each_kind_of_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from semflow.catalog import Catalog, documents\n"
        "def f(catalog, self):\n"
        "    with catalog.engine.begin():\n"
        "        pass\n"
        "    self.catalog.engine.connect()\n"
        "    from semflow import catalog as c\n"
        "    c.metadata.create_all(semflow.catalog.runs)\n"
        "    return catalog_module.runs\n"
    )
    found = [v.split(" ", 1)[1] for v in _violations(bad, tmp_path)]
    assert found == [
        "imports documents from semflow.catalog",
        "uses catalog.engine",
        "uses self.catalog.engine",
        "uses c.metadata",
        "uses semflow.catalog.runs",
        "uses catalog_module.runs",
    ]
