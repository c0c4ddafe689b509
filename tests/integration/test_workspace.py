"""The Airflow pipeline is the DVC pipeline: run in the workspace, unchanged inputs rerun
nothing and register nothing, and a registered version is reproduced from its lineage."""

from __future__ import annotations

import pytest

from semflow.app import Services
from semflow.config import get_settings
from semflow.training.common import STAGES
from tests.integration.test_pipeline import small_overrides, small_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _overrides() -> dict[str, object]:
    # No fine-tune: the other stages are deterministic, so a reproduction must match exactly.
    return {**small_overrides(), "finetune.enabled": False}


def _run_all() -> dict[str, dict]:
    from semflow.training.workspace import dag_stage

    # The CI subset's floors are lower than params.yaml's: an operator's forced gate.
    forced = {"force": True, "forced_by": "ci", "reason": "the small CI subset"}
    return {
        name: dag_stage(name, _overrides(), **(forced if name == "register" else {}))
        for name in STAGES
    }


def test_same_snapshot_reruns_nothing_then_the_version_is_reproduced(
    semflow_home, tmp_path, monkeypatch, moto_endpoint, s3_credentials
):
    """With the S3 remote of compose (moto's S3 server over HTTP standing in for MinIO)."""
    import boto3

    bucket = f"dvc-{tmp_path.name[-12:].lower().replace('_', '-')}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv("SEMFLOW_DVC_REMOTE_URL", f"s3://{bucket}/dvc")
    monkeypatch.setenv("SEMFLOW_S3_ENDPOINT_URL", moto_endpoint)
    get_settings.cache_clear()
    from semflow import registry
    from semflow.training.lineage import snapshot_md5
    from semflow.training.reproduce import reproduce
    from semflow.training.workspace import Workspace

    s = get_settings()
    from semflow.sync import run_sync

    run_sync(small_source(tmp_path), Services.from_settings(s))
    first = _run_all()
    assert all(r["ran"] for r in first.values()), {k: r["ran"] for k, r in first.items()}
    version = first["register"]["version"]
    ws = Workspace.for_home(s)
    ws.push()
    pushed = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket=bucket)
    assert pushed.get("KeyCount", 0) > 0, "nothing was pushed to the DVC remote"

    # The same snapshot again: the snapshot is re-read (always), comes out the same, and no
    # other stage runs; nothing is registered.
    second = _run_all()
    assert {k for k, r in second.items() if r["ran"]} <= {"snapshot"}, second
    assert [v["version"] for v in registry.list_versions(s.tracking_uri, s.registered_model)] == [
        version
    ]

    lineage = registry.lineage_of(s.tracking_uri, s.registered_model, version)
    from semflow.training.common import Paths

    assert lineage["snapshot_md5"] == snapshot_md5(Paths(ws.root))
    assert lineage["mlflow_run_id"] and lineage["dvc_lock_sha256"] and lineage["params_sha256"]
    assert lineage["dvc_remote"] == s.dvc_remote
    assert lineage["embedder_version"].startswith(s.embedder_name + "@")

    # Reproduce from the lineage alone: the workspace and its cache are gone.
    import shutil

    shutil.rmtree(ws.root)
    monkeypatch.chdir(tmp_path)
    out = reproduce(version, settings=s, workdir=tmp_path / "repro", tolerance=0.0)
    assert not (tmp_path / "mlflow.db").exists()  # no stray default MLflow store
    assert out["reproduced"], out["metrics"]
    assert out["metrics"]["classifier.accuracy"]["diff"] == 0.0
    # Reproducing wrote nothing to the real registry.
    assert len(registry.list_versions(s.tracking_uri, s.registered_model)) == 1


def test_reproducing_an_unknown_version_is_one_sentence(semflow_home, capsys):
    from semflow.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["model", "reproduce", "7"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "v7" in err and "Traceback" not in err


def test_a_data_verdict_is_not_a_retryable_pipeline_error(semflow_home, tmp_path):
    """A snapshot that fails a critical check stops `validate` with the check's own sentence,
    as a Verdict: the DAG fails the task instead of retrying it."""
    import pandas as pd

    from semflow.errors import Verdict
    from semflow.sources.base import FieldMapping
    from semflow.sources.files import FileSource
    from semflow.sync import run_sync
    from semflow.training.workspace import StageRejected, dag_stage

    bad = tmp_path / "bad.csv"
    pd.DataFrame(
        {"text": [f"hello {i}" for i in range(30)], "category": ["no_such_intent"] * 30}
    ).to_csv(bad, index=False)
    mapping = FieldMapping(
        id="@row", text="text", labels="category", updated_at=None, tenant_value="bank"
    )
    run_sync(FileSource("bad", bad, mapping), Services.from_settings(get_settings()))
    overrides = {"validate.min_examples_per_label": 1}
    assert dag_stage("snapshot", overrides)["ran"]
    with pytest.raises(StageRejected) as err:
        dag_stage("validate", overrides)
    assert isinstance(err.value, Verdict)
    assert str(err.value).startswith("validation failed on 30 rows")
    assert "to_be_in_set(label)" in str(err.value) and "dvc" not in str(err.value)


def test_two_dags_in_the_workspace_at_once_take_turns(semflow_home, tmp_path):
    """A snapshot (validate_data) while another task runs DVC (train_models) must wait for
    it, not fail on DVC's repo lock or run on a half-written params.yaml."""
    from concurrent.futures import ThreadPoolExecutor

    from semflow.sync import run_sync
    from semflow.training.workspace import dag_stage

    run_sync(small_source(tmp_path), Services.from_settings(get_settings()))
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(dag_stage, "snapshot", _overrides()) for _ in range(2)]
        results = [r.result(timeout=600) for r in runs]
    assert all("rows" in r or not r["ran"] for r in results), results
