"""docs/ARCHITECTURE.md stays true: every module it names exists."""

from __future__ import annotations

import re

from semflow.config import REPO_ROOT

DOC = REPO_ROOT / "docs" / "ARCHITECTURE.md"
# `semflow/x.py`, `semflow/x/`, `bentos/x.py`, `dags/`, `training/<stage>.py` (placeholders
# in angle brackets are not paths)
_PATH = re.compile(r"`((?:semflow|bentos|dags|training|tests)/[A-Za-z0-9_/.]*)`")
_SHORT = re.compile(r"`([a-z_]+/[a-z_]+\.py|[a-z_]+\.py)`")
# Packages of one module per item, listed by their package path alone.
_ONE_PER_ITEM = {"semflow/training/stages"}


def _named_paths(text: str) -> set[str]:
    return set(_PATH.findall(text))


def _resolve(path: str):
    root = REPO_ROOT / "src" if path.startswith("semflow/") else REPO_ROOT
    return root / path


def test_every_module_the_doc_names_exists():
    text = DOC.read_text()
    named = _named_paths(text)
    assert len(named) >= 20  # the doc still names the modules, not just prose
    missing = sorted(p for p in named if not _resolve(p).exists())
    assert missing == [], f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"


def test_the_owner_table_covers_every_library_module():
    """A new module gets a line in the doc (or lives in a package the doc names)."""
    text = DOC.read_text()
    named = _named_paths(text)
    packages = {p.rstrip("/") for p in named if p.endswith("/")}
    files = {p for p in named if p.endswith(".py")}
    short = set(_SHORT.findall(text))
    src = REPO_ROOT / "src"
    unlisted = []
    for path in sorted((src / "semflow").rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if path.name == "__init__.py" or rel in files:
            continue
        parent = path.parent.relative_to(src).as_posix()
        if parent in _ONE_PER_ITEM and parent in packages:
            continue
        if parent in packages and path.name in {s.rsplit("/", 1)[-1] for s in short}:
            continue
        unlisted.append(rel)
    assert unlisted == [], f"modules missing from docs/ARCHITECTURE.md: {unlisted}"


def test_a_vanished_module_is_caught(tmp_path):
    assert not _resolve("semflow/no_such_module.py").exists()
    assert "semflow/no_such_module.py" in _named_paths("see `semflow/no_such_module.py`")
