"""semflow.datasets: daily candidates and the monthly full dataset, on a local folder and on
S3 (moto server over HTTP); gold data and label set from params.yaml."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from semflow.config import get_settings
from semflow.datasets import (
    DatasetError,
    build_dataset,
    collect_candidates,
    export_dataset,
)
from semflow.predictions import Prediction, append
from semflow.storage import S3Storage, StorageError, open_storage
from semflow.training.params import load_pipeline_params


@pytest.fixture
def s3_settings(moto_endpoint, s3_credentials, semflow_home, monkeypatch):
    import boto3

    bucket = f"sf-{semflow_home.parent.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv("SEMFLOW_STORAGE_URL", f"s3://{bucket}/datasets")
    monkeypatch.setenv("SEMFLOW_S3_ENDPOINT_URL", moto_endpoint)
    get_settings.cache_clear()
    return get_settings()


def _preds(day: str) -> list[Prediction]:
    rows = [
        ("my card has not arrived", "card_arrival", 0.91),
        ("what is the exchange rate", "exchange_rate", 0.42),
        ("card still not here", "card_arrival", 0.30),
        ("top up failed", "top_up_failed", 0.77),
    ]
    return [
        Prediction(t, label, score, "m@1", f"{day}T{10 + i:02d}:00:00+00:00", "bank", f"r{i}")
        for i, (t, label, score) in enumerate(rows)
    ]


# -- days and months ------------------------------------------------------------------
def test_bad_day_and_month(semflow_home):
    with pytest.raises(DatasetError, match="YYYY-MM-DD"):
        collect_candidates("2026-13-01")
    with pytest.raises(DatasetError, match="YYYY-MM"):
        build_dataset("2026-5")


# -- candidates -------------------------------------------------------------------------
def _check_candidates(storage, day: str) -> dict:
    manifest = json.loads(storage.get(f"candidates/{day}/manifest.json"))
    df = pd.read_parquet(io.BytesIO(storage.get(f"candidates/{day}/candidates.parquet")))
    assert len(df) == manifest["rows"] == 4
    assert manifest["counts_per_label"] == {
        "card_arrival": 2,
        "exchange_rate": 1,
        "top_up_failed": 1,
    }
    assert manifest["low_confidence"] == 2
    assert manifest["low_confidence_per_label"] == {"card_arrival": 1, "exchange_rate": 1}
    assert sorted(df.loc[df.low_confidence, "request_id"]) == ["r1", "r2"]
    assert manifest["source"]["prediction_log"] == f"{day}.jsonl"
    return manifest


def test_collect_candidates_local_is_idempotent(semflow_home):
    append(semflow_home, _preds("2026-05-03") + _preds("2026-05-04"))
    m1 = collect_candidates(date(2026, 5, 3))
    storage = open_storage()
    assert _check_candidates(storage, "2026-05-03") == m1
    before = storage.list("candidates")
    data1 = storage.get("candidates/2026-05-03/candidates.parquet")
    m2 = collect_candidates("2026-05-03")
    assert m2 == m1
    assert (
        storage.list("candidates")
        == before
        == [
            "candidates/2026-05-03/candidates.parquet",
            "candidates/2026-05-03/manifest.json",
        ]
    )
    assert storage.get("candidates/2026-05-03/candidates.parquet") == data1
    # A stricter threshold flags more; same keys rewritten.
    assert collect_candidates("2026-05-03", low_confidence=0.8)["low_confidence"] == 3
    assert storage.list("candidates") == before


def test_collect_candidates_empty_day(semflow_home):
    m = collect_candidates("2026-05-09")
    assert m["rows"] == 0 and m["counts_per_label"] == {} and m["source"]["sha256"] is None
    assert open_storage().exists("candidates/2026-05-09/candidates.parquet")


def test_collect_candidates_s3(s3_settings):
    append(s3_settings.home, _preds("2026-05-03"))
    collect_candidates("2026-05-03")
    storage = open_storage()
    assert isinstance(storage, S3Storage)
    _check_candidates(storage, "2026-05-03")
    # The objects are really in the bucket under the prefix.
    keys = [o["Key"] for o in storage.client.list_objects_v2(Bucket=storage.bucket)["Contents"]]
    assert sorted(keys) == [
        "datasets/candidates/2026-05-03/candidates.parquet",
        "datasets/candidates/2026-05-03/manifest.json",
    ]
    assert storage.exists("candidates/2026-05-03/manifest.json")
    assert not storage.exists("candidates/2026-05-04/manifest.json")
    with pytest.raises(StorageError, match="does not exist"):
        storage.get("candidates/2026-05-04/manifest.json")


# -- full dataset ------------------------------------------------------------------------
def _gold(tmp_path: Path) -> Path:
    p = tmp_path / "gold.csv"
    pd.DataFrame(
        {
            "text": ["my card has not arrived", "exchange rate please", "lost my card"],
            "category": ["card_arrival", "exchange_rate", "lost_or_stolen_card"],
        }
    ).to_csv(p, index=False)
    return p


def _verified(storage, day: str, rows: list[tuple[str, str]]) -> None:
    buf = io.BytesIO()
    pd.DataFrame(rows, columns=["text", "label"]).to_parquet(buf, index=False)
    storage.put(f"verified/{day}/verified.parquet", buf.getvalue())


def _check_full(storage, tmp_path) -> None:
    gold = _gold(tmp_path)
    _verified(storage, "2026-04-20", [("top up failed", "top_up_failed"), ("x y", "card_arrival")])
    _verified(
        storage,
        "2026-05-02",
        [
            ("Top  up failed", "top_up_reverted"),  # later review of the same text wins
            ("My card has NOT arrived", "exchange_rate"),  # gold wins
            ("weird", "not_a_label"),  # unknown label dropped
        ],
    )
    _verified(storage, "2026-06-01", [("next month", "card_arrival")])  # after the month

    m = build_dataset("2026-05", gold_path=gold)
    assert m["counts"] == {
        "gold": 3,
        "verified_added": 2,
        "verified_duplicate_of_gold": 1,
        "verified_unknown_label": 1,
    }
    df = pd.read_parquet(io.BytesIO(storage.get("full/2026-05/train.parquet")))
    assert len(df) == m["rows"] == 5
    rows = dict(zip(df.text, df.label, strict=True))
    assert rows["Top  up failed"] == "top_up_reverted"
    assert rows["my card has not arrived"] == "card_arrival"
    assert "next month" not in rows and "weird" not in rows
    assert [s["key"] for s in m["sources"]["verified"]] == [
        "verified/2026-04-20/verified.parquet",
        "verified/2026-05-02/verified.parquet",
    ]
    assert len(m["sources"]["gold"]["sha256"]) == 64
    # Idempotent: same month, same bytes, same keys.
    data = storage.get("full/2026-05/train.parquet")
    assert build_dataset("2026-05", gold_path=gold) == m
    assert storage.get("full/2026-05/train.parquet") == data
    assert storage.list("full") == ["full/2026-05/manifest.json", "full/2026-05/train.parquet"]
    # April sees only April's review.
    assert build_dataset("2026-04", gold_path=gold)["counts"]["verified_added"] == 2


def test_build_dataset_local(semflow_home, tmp_path):
    _check_full(open_storage(), tmp_path)
    out = export_dataset("2026-05", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train.parquet"]


def test_build_dataset_s3(s3_settings, tmp_path):
    _check_full(open_storage(), tmp_path)


def test_build_dataset_on_the_bundled_gold(semflow_home):
    m = build_dataset("2026-01")
    assert m["counts"]["gold"] == 10003
    assert len(m["counts_per_label"]) == 77
    assert m["sources"]["gold"]["path"] == "data/banking77/train.csv"


def test_gold_data_and_labels_come_from_params(semflow_home, tmp_path):
    gold = _gold(tmp_path)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["card_arrival", "top_up_failed"]))
    _verified(
        open_storage(),
        "2026-05-02",
        [("top up failed", "top_up_failed"), ("rate?", "exchange_rate"), ("x", "other")],
    )
    params = load_pipeline_params(
        overrides={"validate.reference": str(gold), "validate.allowed_labels": str(labels)}
    )
    m = build_dataset("2026-05", params=params)
    assert m["counts"] == {  # exchange_rate is known: the gold data has it
        "gold": 3,
        "verified_added": 2,
        "verified_duplicate_of_gold": 0,
        "verified_unknown_label": 1,
    }
    assert m["sources"]["gold"]["path"] == "gold.csv"  # not under the repo: its name
    # Explicit arguments win over params.
    m = build_dataset("2026-05", params=params, labels=["top_up_failed"])
    assert m["counts"]["verified_added"] == 1
    no_labels = load_pipeline_params(
        overrides={"validate.reference": str(gold), "validate.allowed_labels": None}
    )
    counts = build_dataset("2026-05", params=no_labels)["counts"]  # the gold labels only
    assert counts["verified_added"] == 1 and counts["verified_unknown_label"] == 2
    with pytest.raises(DatasetError, match=r"validate\.reference"):
        build_dataset(
            "2026-05", params=load_pipeline_params(overrides={"validate.reference": None})
        )
    missing = load_pipeline_params(overrides={"validate.allowed_labels": str(tmp_path / "no")})
    with pytest.raises(DatasetError, match=r"validate\.allowed_labels"):
        build_dataset("2026-05", params=missing, gold_path=gold)


def test_export_missing_month_is_clear(semflow_home, tmp_path):
    with pytest.raises(DatasetError, match="run build_dataset first"):
        export_dataset("2026-02", tmp_path / "x")
