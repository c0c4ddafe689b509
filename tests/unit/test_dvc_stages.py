"""dvc.yaml lists the code each stage's outputs depend on, so `dvc repro` reruns a stage
when that code changes, and only then; its data deps follow params.yaml (DVC templating)."""

from __future__ import annotations

import ast
import shutil
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


# -- data deps from params.yaml ----------------------------------------------------------
# The data files a user swaps for their own: (stage, params key). Every other data dep is an
# output of an earlier stage.
PARAM_DATA_DEPS = {
    "validate": ["validate.reference", "validate.allowed_labels"],
    "prepare": ["prepare.external_test"],
}
STAGE_DATA_DEPS = {
    "validate": {"data/snapshot/documents.csv"},
    "prepare": {"data/snapshot/documents.csv", "metrics/validate.json"},
}


def _resolved_deps(root: Path) -> dict[str, list[str]]:
    """Each stage's file deps as DVC itself resolves dvc.yaml (templates filled from
    params.yaml), without the params.yaml entry of its `params:`."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            s.name: [d.def_path for d in s.deps if not isinstance(d, ParamsDependency)]
            for s in repo.index.stages
        }


def _dotted(params: dict, key: str) -> object:
    for part in key.split("."):
        params = params[part]
    return params


def _data_deps(deps: list[str]) -> set[str]:
    return {d for d in deps if not d.startswith(("src/", "training/"))}


def test_data_deps_are_params_not_hard_coded() -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    resolved = _resolved_deps(REPO_ROOT)
    for stage, keys in PARAM_DATA_DEPS.items():
        for key in keys:
            # DVC cannot template a null into a dep (it stops with "unexpected error" before
            # any stage runs), so under `dvc repro` these params must name files.
            value = _dotted(params, key)
            assert isinstance(value, str), f"params.yaml {key} must name a file for dvc repro"
            assert (REPO_ROOT / value).is_file(), f"params.yaml {key}: {value} does not exist"
        raw = [d for d in _stages()[stage]["deps"] if not d.startswith(("src/", "training/"))]
        assert {f"${{{k}}}" for k in keys} <= set(raw), f"{stage}: {raw}"
        expected = STAGE_DATA_DEPS[stage] | {_dotted(params, k) for k in keys}
        assert _data_deps(resolved[stage]) == expected
    # Code deps are the same strings before and after templating.
    for stage, spec in _stages().items():
        code = [d for d in spec["deps"] if d.startswith(("src/", "training/"))]
        assert [d for d in resolved[stage] if d.startswith(("src/", "training/"))] == code


def test_own_data_paths_in_params_become_the_deps(tmp_path: Path) -> None:
    """A user's own files: editing params.yaml alone changes what `dvc repro` tracks."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy2(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    own = {
        "validate.reference": "data/own/reference.csv",
        "validate.allowed_labels": "data/own/labels.json",
        "prepare.external_test": "data/own/test.csv",
    }
    for key, value in own.items():
        section, name = key.split(".")
        params[section][name] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    resolved = _resolved_deps(tmp_path)
    for stage, keys in PARAM_DATA_DEPS.items():
        assert _data_deps(resolved[stage]) == STAGE_DATA_DEPS[stage] | {own[k] for k in keys}
    assert not any("banking77" in d for deps in resolved.values() for d in deps)


def test_the_deps_rule_sees_function_level_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from semflow.models.ranker import rank_groups\n    import semflow.x\n"
    )
    assert _semflow_imports(f) == {"semflow.models.ranker", "semflow.x"}
