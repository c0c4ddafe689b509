"""`bentoml build` from the repo root: the Bento holds the service, the library and exact pins."""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_tree

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_bentoml_build(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    exe = Path(sys.executable).with_name("bentoml")
    proc = run_tree([str(exe), "build", "--output", "tag", "."], cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bentos = list((tmp_path / "bentos" / "semflow").iterdir())
    bentos = [b for b in bentos if b.is_dir()]
    assert len(bentos) == 1
    bento = bentos[0]
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "bentos.service:Semflow"
    routes = {r["name"]: r for r in meta["schema"]["routes"]}
    assert routes["encode"]["batchable"] is True
    # The job routes (/embed_job/*, /classify_job/*) are the service's own Starlette app,
    # not BentoML APIs; the benchmarks' HTTP floor (echo) is not part of the product.
    assert set(routes) == {"embed", "encode", "similarity", "search", "classify", "rank"}
    assert "echo" not in routes
    src = bento / "src"
    assert (src / "bentos" / "service.py").is_file()
    assert (src / "src" / "semflow" / "serving" / "engine.py").is_file()
    assert not (src / "tests").exists() and not (src / "var").exists()
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().split()
    pins = dict(r.split("==", 1) for r in reqs if "==" in r)
    for pkg in ("bentoml", "sentence-transformers", "torch", "qdrant-edge-py", "mlflow"):
        assert pins[pkg] == version(pkg), pkg
