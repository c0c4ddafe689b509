"""dvc.yaml lists the code each stage's outputs depend on, so `dvc repro` reruns a stage
when that code changes, and only then."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from semflow.config import REPO_ROOT
from semflow.training import STAGES

STAGES_DIR = REPO_ROOT / "src" / "semflow" / "training" / "stages"
# Settings and error types do not shape a stage's outputs.
NOT_DEPS = {"semflow.config", "semflow.errors"}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _semflow_imports(path: Path) -> set[str]:
    """Every `semflow.*` module imported anywhere in the file (function-level included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "semflow":
            out.update(f"semflow.{a.name}" for a in node.names)  # from semflow import registry
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("semflow."):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("semflow"))
    return out


def _code_deps(stage: str) -> set[str]:
    """The stage module's semflow imports, following imports of other stage modules."""
    seen: set[str] = set()
    todo = [f"semflow.training.stages.{stage}"]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        if mod.startswith("semflow.training.stages."):
            todo.extend(_semflow_imports(STAGES_DIR / f"{mod.rsplit('.', 1)[1]}.py"))
    return seen - NOT_DEPS


def _source(module: str) -> str:
    rel = Path("src", *module.split("."))
    return f"{rel}.py" if (REPO_ROOT / f"{rel}.py").is_file() else str(rel)


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_has_a_module_of_its_own() -> None:
    assert set(_stages()) == set(STAGES)
    assert {p.stem for p in STAGES_DIR.glob("*.py")} - {"__init__"} == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_cover_the_code_it_imports(stage: str) -> None:
    spec = _stages()[stage]
    deps = [d for d in spec["deps"] if isinstance(d, str)]
    for path in deps:
        if path.startswith(("src/", "training/")):  # data and models are outputs of stages
            assert (REPO_ROOT / path).exists(), f"{stage}: dep {path} does not exist"
    needed = {
        f"training/{stage}.py",
        "src/semflow/training/common.py",
        "src/semflow/training/params.py",  # every stage reads params.yaml through it
    }
    if not spec.get("always_changed"):  # `snapshot` reruns on every repro anyway
        needed |= {_source(m) for m in _code_deps(stage)}
    missing = sorted(p for p in needed if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} does not list {missing}"


def test_the_deps_rule_sees_function_level_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from semflow.models.ranker import rank_groups\n    import semflow.x\n"
    )
    assert _semflow_imports(f) == {"semflow.models.ranker", "semflow.x"}
