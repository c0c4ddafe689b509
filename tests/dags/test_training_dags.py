"""`dag.test()` of validate_data -> train_models -> register_model on a small subset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from semflow.app import Services
from semflow.config import REPO_ROOT, get_settings
from tests.integration.test_pipeline import small_overrides, small_source
from tests.service.serve_helpers import ADMIN, serve

pytestmark = pytest.mark.slow


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags")).get_dag(dag_id)


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_assets_chain_the_dags(airflow_db) -> None:
    uris = {}
    for dag_id in ("validate_data", "train_models", "register_model"):
        dag = _dag(dag_id)
        outlets = {o.uri.rstrip("/") for t in dag.tasks for o in getattr(t, "outlets", [])}
        uris[dag_id] = outlets
    assert "semflow://validated-snapshot" in uris["validate_data"]
    assert "semflow://candidate-model" in uris["train_models"]
    assert "semflow://champion" in uris["register_model"]
    assert "semflow://documents" in str(_dag("validate_data").timetable.asset_condition)
    assert "validated-snapshot" in str(_dag("train_models").timetable.asset_condition)
    assert "candidate-model" in str(_dag("register_model").timetable.asset_condition)


def test_validate_train_register_ends_with_loadable_champion(airflow_db, semflow_home, tmp_path):
    from bentos.build import build_bento
    from semflow import registry
    from semflow.embedding import resolve_embedder
    from semflow.sync import run_sync

    s = get_settings()
    run_sync(small_source(tmp_path), Services.from_settings(s))
    overrides = small_overrides()

    run = _dag("validate_data").test(run_conf={"overrides": overrides})
    assert run.state == "success", _states(run)
    run = _dag("train_models").test(
        run_conf={"overrides": overrides, "finetune": False, "train_ranker": True}
    )
    assert run.state == "success", _states(run)
    metrics = json.loads((s.home / "pipeline" / "metrics" / "evaluate.json").read_text())
    assert metrics["classifier"]["accuracy"] > 0.7
    # The CI subset's lower floors weaken the gate: refused without force, recorded with it.
    run = _dag("register_model").test(run_conf={"overrides": overrides, "build_bento": True})
    assert _states(run)["register"] == "failed" and run.state == "failed"
    assert registry.list_versions(s.tracking_uri, s.registered_model) == []
    run = _dag("register_model").test(
        run_conf={
            "overrides": overrides,
            "build_bento": True,
            "force": True,
            "force_reason": "CI subset: 8 labels",
        }
    )
    assert run.state == "success", _states(run)
    states = _states(run)
    assert states["register"] == "success"
    assert states["reindex"] in ("success", "skipped")

    bundle = registry.load_champion(s.tracking_uri, s.registered_model)
    assert bundle is not None and bundle.alias == "champion"
    c = registry.client(s.tracking_uri)
    tags = c.get_model_version(s.registered_model, bundle.registry_version).tags
    assert tags["gate.forced"] == "true" and tags["gate.forced_reason"] == "CI subset: 8 labels"
    assert tags["gate.forced_by"] == "dag_test"  # the run's triggering user
    assert "lowers the floor on classifier.accuracy" in tags["gate.forced_changes"]
    emb = resolve_embedder(s)
    assert bundle.embedder_dir is None and bundle.embedder_version == emb.version
    test = pd.read_csv(s.home / "pipeline" / "data" / "prepared" / "test.csv").head(10)
    out = bundle.classify(emb.encode(test["text"].tolist()), top_k=3)
    assert len(out) == 10 and all(len(o["alternatives"]) == 3 for o in out)

    # The Bento built after promotion serves exactly that version, baked in: the registry
    # is pointed somewhere empty to prove the model does not come from it.
    assert states["bento"] == "success"
    with serve(
        s.home,
        tmp_path,
        target=f"semflow:v{bundle.registry_version}",
        BENTOML_HOME=os.environ["BENTOML_HOME"],
        SEMFLOW_MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'empty.db'}",
    ) as url:
        info = httpx.get(f"{url}/model", headers=ADMIN, timeout=30).json()
        assert info["alias"] == "pinned" and info["version"] == bundle.registry_version
        # what it was trained from travels with it
        lineage = info["lineage"]
        assert lineage["bento_tag"] == f"semflow:v{bundle.registry_version}"
        assert lineage["snapshot_md5"] and lineage["mlflow_run_id"]
        assert lineage["airflow_dag_id"] == "register_model"
        r = httpx.post(
            f"{url}/classify", json={"texts": test["text"].tolist()[:3]}, headers=ADMIN, timeout=60
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 3
    # a retried bento task finds its Bento and succeeds without rebuilding
    again = build_bento(bundle.registry_version)
    assert (
        again["built"] and again["tag"] == f"semflow:v{bundle.registry_version}" and again["note"]
    )

    # The same snapshot again: DVC reruns no stage, so nothing is registered, built or
    # re-indexed, and the workspace's dvc.lock is as it was.
    lock = (s.home / "pipeline" / "dvc.lock").read_text()
    run = _dag("train_models").test(
        run_conf={"overrides": overrides, "finetune": False, "train_ranker": True}
    )
    assert run.state == "success", _states(run)
    run = _dag("register_model").test(
        run_conf={"overrides": overrides, "force": True, "force_reason": "CI subset: 8 labels"}
    )
    assert run.state == "success", _states(run)
    assert _states(run)["bento"] == "skipped" and _states(run)["reindex"] == "skipped"
    assert [v["version"] for v in registry.list_versions(s.tracking_uri, s.registered_model)] == [
        bundle.registry_version
    ]
    after = (s.home / "pipeline" / "dvc.lock").read_text()
    changed = {
        k
        for k, v in yaml.safe_load(after)["stages"].items()
        if yaml.safe_load(lock)["stages"].get(k) != v
    }
    assert changed == set(), changed
    # ... and the data it was trained on is in the (local) DVC remote, from where the version
    # is reproduced with the same metrics
    assert any(Path(s.dvc_remote).rglob("*")), "nothing was pushed to the DVC remote"
    from semflow.training.reproduce import reproduce

    again = reproduce(bundle.registry_version, settings=s, tolerance=0.0)
    assert again["reproduced"], again["metrics"]


def test_bad_data_fails_the_validate_task(airflow_db, semflow_home, tmp_path):
    """A snapshot with unknown labels fails `validate`, so nothing downstream is triggered."""
    from semflow.sources.base import FieldMapping
    from semflow.sources.files import FileSource
    from semflow.sync import run_sync

    bad = tmp_path / "bad.csv"
    pd.DataFrame(
        {"text": [f"hello {i}" for i in range(30)], "category": ["no_such_intent"] * 30}
    ).to_csv(bad, index=False)
    src = FileSource(
        "bad",
        bad,
        FieldMapping(
            id="@row", text="text", labels="category", updated_at=None, tenant_value="bank"
        ),
    )
    run_sync(src, Services.from_settings(get_settings()))
    run = _dag("validate_data").test(run_conf={"overrides": {"validate.min_examples_per_label": 1}})
    states = _states(run)
    assert states["snapshot"] == "success"
    assert states["validate"] == "failed"
    assert run.state == "failed"
