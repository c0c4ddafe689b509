"""`dag.test()` of collect_predictions and build_dataset against the local folder and against
moto's S3 in server mode (HTTP on 127.0.0.1), and of maintenance with and without dry run."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from semflow.config import REPO_ROOT, get_settings
from semflow.predictions import Prediction, append
from semflow.storage import S3Storage, open_storage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    return {d: bag.get_dag(d) for d in ("collect_predictions", "build_dataset", "maintenance")}


@pytest.fixture(params=["local", "s3"])
def storage_kind(request, semflow_home, monkeypatch):
    if request.param == "s3":
        import boto3

        endpoint = request.getfixturevalue("moto_endpoint")
        request.getfixturevalue("s3_credentials")
        bucket = f"dagtest-{semflow_home.parent.name.lower().replace('_', '-')[-30:]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        monkeypatch.setenv("SEMFLOW_STORAGE_URL", f"s3://{bucket}/datasets")
        monkeypatch.setenv("SEMFLOW_S3_ENDPOINT_URL", endpoint)
    get_settings.cache_clear()
    return request.param


def test_collect_then_build(dags, storage_kind, semflow_home):
    preds = [
        Prediction(
            "card not here", "card_arrival", 0.9, "m@1", "2026-05-03T08:00:00+00:00", "b", "1"
        ),
        Prediction("rate?", "exchange_rate", 0.2, "m@1", "2026-05-03T23:59:59+00:00", "b", "2"),
        Prediction("other day", "exchange_rate", 0.9, "m@1", "2026-05-04T00:00:00+00:00", "b", "3"),
    ]
    append(semflow_home, preds)
    # A manual run at midnight covers the day that just ended: [05-03, 05-04).
    run = dags["collect_predictions"].test(
        logical_date=datetime(2026, 5, 4, tzinfo=UTC), run_conf={"low_confidence": 0.5}
    )
    assert run.state == "success"
    assert run.data_interval_start == datetime(2026, 5, 3, tzinfo=UTC)
    storage = open_storage()
    assert isinstance(storage, S3Storage) == (storage_kind == "s3")
    # The run's data interval is the day 2026-05-03: the prediction at midnight after is not in.
    manifest = json.loads(storage.get("candidates/2026-05-03/manifest.json"))
    assert manifest["rows"] == 2 and manifest["low_confidence"] == 1
    assert manifest["counts_per_label"] == {"card_arrival": 1, "exchange_rate": 1}
    assert storage.list("candidates") == [
        "candidates/2026-05-03/candidates.parquet",
        "candidates/2026-05-03/manifest.json",
    ]

    # A reviewer verifies the low-confidence one; the monthly build picks it up.
    cands = pd.read_parquet(io.BytesIO(storage.get("candidates/2026-05-03/candidates.parquet")))
    reviewed = cands[cands.low_confidence][["text", "label"]]
    buf = io.BytesIO()
    reviewed.to_parquet(buf, index=False)
    storage.put("verified/2026-05-03/verified.parquet", buf.getvalue())

    run = dags["build_dataset"].test(logical_date=datetime(2026, 6, 1, tzinfo=UTC))
    assert run.state == "success"
    assert run.data_interval_start == datetime(2026, 5, 1, tzinfo=UTC)
    full = json.loads(storage.get("full/2026-05/manifest.json"))
    assert full["counts"]["gold"] == 10003 and full["counts"]["verified_added"] == 1
    assert full["sources"]["verified"][0]["key"] == "verified/2026-05-03/verified.parquet"
    df = pd.read_parquet(io.BytesIO(storage.get("full/2026-05/train.parquet")))
    assert len(df) == 10004 and "rate?" in set(df.text)


def test_maintenance_dry_run_then_real(dags, semflow_home):
    folder = semflow_home / "predictions"
    folder.mkdir(parents=True)
    for d in ["2026-03-01", "2026-05-30"]:
        (folder / f"{d}.jsonl").write_text("")
    conf = {"dry_run": True, "prediction_retention_days": 30}
    when = datetime(2026, 6, 1, tzinfo=UTC)
    run = dags["maintenance"].test(logical_date=when, run_conf=conf)
    assert run.state == "success"
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        t: "success"
        for t in (
            "retry_dead_letters",
            "upgrade_index_layout",
            "prune_generations",
            "purge_predictions",
            "prune_failed_rows",
            "purge_mlflow_runs",
        )
    }
    assert sorted(p.name for p in folder.iterdir()) == ["2026-03-01.jsonl", "2026-05-30.jsonl"]
    run = dags["maintenance"].test(logical_date=when, run_conf={**conf, "dry_run": False})
    assert run.state == "success"
    assert sorted(p.name for p in folder.iterdir()) == ["2026-05-30.jsonl"]
