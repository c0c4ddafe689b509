"""`make demo`'s script end to end in quick mode: real DAGs, a real `bentoml serve` answering
every printed example with 200, and a second run that reuses what is cached."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import run_tree
from tests.service.serve_helpers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _demo(env: dict, *args: str) -> str:
    proc = run_tree(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--quick", *args],
        cwd=REPO,
        env=env,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return proc.stdout


# Two demo runs, each a fresh Airflow DB, DAG runs and a Bento start: 4.5 min on a quiet
# 2-core runner, 11 to 15+ min beside `make test`'s other process on a slow one.
@pytest.mark.timeout(2400)
def test_demo_quick_runs_serves_and_then_is_cached(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMFLOW_", "AIRFLOW"))}
    env.update(SEMFLOW_HOME=str(tmp_path / "var"), BENTOML_HOME=str(tmp_path / "bentoml"))
    first = _demo(env, "--check", "--port", str(free_port()))
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in first
    assert "models:/semflow@champion = v1" in first and "semflow:v1" in first
    for route in ("embed", "similarity", "search", "classify", "rank", "labels", "model"):
        assert "curl -s http://127.0.0.1:" in first and f"/{route} " in first, route
    assert "every example request answered 200" in first
    _points_at_every_ui(first)
    assert (tmp_path / "bentoml" / "bentos" / "semflow").is_dir()

    second = _demo(env, "--no-serve")
    assert (
        "train_models DAG: cached" in second
        and "register_model DAG: cached (champion v1)" in second
    )
    _points_at_every_ui(second)


def _points_at_every_ui(out: str) -> None:
    """Both runs end with where to look: Airflow, MLflow, the Bento's /docs, the plots."""
    where = out.split("Where to look:", 1)[1]
    assert "make airflow" in where and "/dags" in where
    assert "mlflow ui --backend-store-uri" in where and "#/models/semflow/versions/1" in where
    assert "/docs" in where
    pictures = [Path(p) for p in where.split("plots", 1)[1].split("\n", 1)[0].split()]
    assert {p.name for p in pictures} == {"confusion_matrix.png", "per_class_f1.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)
