"""DagBag integrity: every DAG file imports, loads nothing heavy and carries tags, owner, retries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
HEAVY = (
    "torch",
    "mlflow",
    "qdrant_edge",
    "qdrant_client",
    "great_expectations",
    "sentence_transformers",
    "sklearn",
    "bentoml",
    "dvc",
)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_every_file_defines_one_dag_named_after_its_function(dagbag):
    ids_by_file: dict[str, list[str]] = {}
    for dag_id, dag in dagbag.dags.items():
        ids_by_file.setdefault(Path(dag.fileloc).name, []).append(dag_id)
    for f in DAG_FILES:
        assert ids_by_file.get(f.name) == [f.stem], f"{f.name} should define exactly DAG {f.stem}"


def test_tags_owner_retries_docs(dagbag):
    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        assert "semflow" in dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md) > 40, f"{dag_id}: module docstring becomes doc_md"
        assert dag.catchup is not None
        for t in dag.tasks:
            assert t.owner == "semflow", f"{dag_id}.{t.task_id} owner"
            assert t.retries >= 1, f"{dag_id}.{t.task_id} needs retries"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parse_imports_nothing_heavy(path):
    """Parsing a DAG file loads no model, tracking or index library (they belong in tasks).

    Parse *time* is a benchmark (`benchmarks/dag_parse.py`), not a timed test."""
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import runpy, sys; runpy.run_path({str(path)!r}); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert heavy.stdout.strip().splitlines()[-1] == "[]", f"{path.name} imports heavy modules"
