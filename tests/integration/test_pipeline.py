"""The training pipeline end to end on a small Banking77 subset (real index, GX, MLflow)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semflow.app import Services
from semflow.config import SAMPLE_DIR, get_settings
from semflow.errors import SettingsError
from semflow.training import (
    STAGES,
    Paths,
    load_pipeline_params,
    parse_params,
    run_pipeline,
    run_stage,
)
from semflow.validation import ValidationFailed
from tests.helpers import run_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_LABELS, PER_LABEL = 8, 30


def small_overrides() -> dict[str, object]:
    """The CI subset: 8 labels x 30 rows, a short fine-tune, 120 test queries."""
    return {
        "base.max_labels": N_LABELS,
        "base.subset": N_LABELS * PER_LABEL,
        "base.test_subset": 120,
        "validate.min_examples_per_label": 5,
        "finetune.epochs": 2,
        "finetune.batch_size": 16,
        "finetune.max_pairs": 200,
        "ranker.max_queries": 40,
        "ranker.step": 0.1,
        "register.floors": {"classifier.accuracy": 0.6, "search.ndcg@10": 0.5},
    }


def small_source(tmp: Path):
    """A FileSource over the first N labels of the sample, PER_LABEL rows each."""
    from semflow.sources.base import FieldMapping
    from semflow.sources.files import FileSource

    df = pd.read_csv(SAMPLE_DIR / "train.csv")
    keep = sorted(df["category"].unique())[:N_LABELS]
    df = df[df["category"].isin(keep)].groupby("category").head(PER_LABEL)
    path = tmp / "small.csv"
    df.to_csv(path, index=False)
    mapping = FieldMapping(
        id="@row",
        text="text",
        labels="category",
        updated_at=None,
        tenant_value="bank",
        type_value="support_query",
    )
    return FileSource("banking77-small", path, mapping)


@pytest.fixture
def pipeline(semflow_home: Path, tmp_path: Path):
    params = load_pipeline_params(overrides=small_overrides())
    return Paths(tmp_path / "work"), params, get_settings()


def test_full_pipeline_registers_a_champion_then_rejects_a_weak_one(pipeline, tmp_path) -> None:
    from semflow import registry

    paths, params, s = pipeline
    run_stage("snapshot", paths, params, s, source=small_source(tmp_path))
    snap = pd.read_csv(paths.snapshot)
    assert len(snap) == N_LABELS * PER_LABEL and snap["label"].nunique() == N_LABELS
    out = run_pipeline(paths, params, s, stages=STAGES[1:])
    assert out["validate"]["success"] and out["finetune"]["finetuned"]

    ev = json.loads((paths.metrics / "evaluate.json").read_text())
    for section, key in [
        ("classifier", "accuracy"),
        ("classifier", "macro_f1"),
        ("classifier", "linear_accuracy"),
        ("search", "ndcg@10"),
        ("search", "precision@10"),
        ("search", "mrr@10"),
        ("ranker", "ndcg@10"),
        ("ranker", "baseline_ndcg@10"),
    ]:
        assert 0.0 <= ev[section][key] <= 1.0, (section, key)
    assert ev["classifier"]["accuracy"] > 0.7
    # The int8 guard: the test split measured again with the int8 export's vectors, judged.
    backends = ev["backends"]
    assert backends["pipeline"] == backends["fp32_backend"] == "torch"
    assert backends["fp32"]["classifier"]["accuracy"] == ev["classifier"]["accuracy"]
    assert backends["fp32"]["search"]["ndcg@10"] == ev["search"]["ndcg@10"]
    int8 = backends["onnx-int8"]
    assert abs(int8["classifier"]["accuracy"] - ev["classifier"]["accuracy"]) < 0.05
    assert abs(int8["search"]["ndcg@10"] - ev["search"]["ndcg@10"]) < 0.05
    verdict = out["register"]["int8"]
    assert verdict["tolerance"] == params.register_.int8_tolerance
    assert verdict["passed"] is all(d <= 0.005 + 1e-9 for d in verdict["drops"].values())
    # The params' vote ships the training embeddings: train + val rows of the subset.
    clf_info = json.loads((paths.metrics / "classifier.json").read_text())
    assert clf_info["memory"] == len(pd.read_csv(paths.prepared / "train.csv")) + len(
        pd.read_csv(paths.prepared / "val.csv")
    )
    assert ev["ranker"]["ndcg@10"] >= ev["ranker"]["baseline_ndcg@10"] - 0.02
    assert set(pd.read_csv(paths.plots / "confusion.csv").columns) == {"actual", "predicted"}
    assert len(pd.read_csv(paths.plots / "per_class_f1.csv")) == N_LABELS
    # Unknown detection on held-out labels (3 of the 8): metrics, trade-off curve and image.
    ops = ev["open_set"]
    assert ops["held_out"] == 3 and ops["oos_test"] > 0 and ops["in_scope_test"] > 0
    for key in ("in_scope_accuracy", "oos_recall", "oos_precision", "auroc", "fpr@95tpr"):
        assert 0.0 <= ops[key] <= 1.0, key
    curve = pd.read_csv(paths.plots / "oos_tradeoff.csv")
    assert set(curve.columns) == {"threshold", "in_scope_accuracy", "oos_recall"}
    assert (paths.plots / "oos_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert (paths.reports / "data_docs" / "index.html").is_file()
    assert out["register"]["promoted"] is True

    champ = registry.load_champion(s.tracking_uri, s.registered_model)
    assert champ is not None and champ.embedder_dir is not None  # fine-tuned embedder shipped
    for backend in ("onnx", "onnx-int8"):  # with its ONNX exports
        assert (champ.embedder_dir / "onnx" / backend / "model.onnx").is_file()
    assert champ.backend_guard == verdict
    # what /labels reports: the threshold's operating point as evaluated
    assert champ.operating_point["open_set_oos_recall"] == ops["oos_recall"]
    assert champ.operating_point["threshold"] == champ.threshold
    from semflow.embedding import Embedder

    emb = Embedder(champ.embedder_dir, "ft")
    assert emb.version.split("@")[1] == champ.embedder_version.split("@")[1]
    test = pd.read_csv(paths.prepared / "test.csv").head(20)
    preds = champ.classify(emb.encode(test["text"].tolist()))
    agree = np.mean(
        [p["label"] in (t, "unknown") for p, t in zip(preds, test["label"], strict=True)]
    )
    assert agree > 0.7

    # The champion's embedder differs from the one that built the index: rebuild, check, swap.
    from semflow.index import open_store
    from semflow.training import reindex_if_changed

    store = open_store(s)
    before = store.live_generation()
    rx = reindex_if_changed(paths, params, s)
    assert rx["reindexed"] is True, rx
    assert rx["golden_ndcg"] >= rx["old_golden_ndcg"]
    assert store.live_generation() != before
    assert store.live_embedder_version() == champ.embedder_version
    with store.open_live() as idx:
        assert idx.count() == N_LABELS * PER_LABEL
    assert reindex_if_changed(paths, params, s)["reindexed"] is False  # idempotent

    # One run tree: a parent with a nested run per stage, tagged with data hash and commit.
    c = registry.client(s.tracking_uri)
    exp = c.get_experiment_by_name("semflow")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if "semflow.pipeline_key" in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.data.tags["semflow.stage"] for r in children} >= {
        "validate",
        "classifier",
        "register",
    }
    assert all(r.data.tags["semflow.data_hash"] not in ("", "missing") for r in children)
    assert all("semflow.git_commit" in r.data.tags for r in children)
    val_run = next(r for r in children if r.data.tags["semflow.stage"] == "validate")
    arts = [a.path for a in c.list_artifacts(val_run.info.run_id, "validation")]
    assert any(a.endswith("data_docs") for a in arts)

    # A weak candidate: 5% of the training split, same pipeline -> registered, not promoted.
    train = pd.read_csv(paths.prepared / "train.csv")
    weak = train.groupby("label").head(max(1, int(0.05 * len(train) / N_LABELS)))
    weak.to_csv(paths.prepared / "train.csv", index=False)
    weak_params = parse_params(params.raw(), {"finetune.enabled": False})
    res = run_pipeline(paths, weak_params, s, stages=STAGES[3:])
    gate = res["register"]
    assert gate["promoted"] is False and gate["alias"] == "challenger"
    assert any("regresses" in r or "below the floor" in r for r in gate["reasons"])
    assert (
        str(c.get_model_version_by_alias("semflow", "champion").version) == champ.registry_version
    )
    mv = c.get_model_version("semflow", gate["version"])
    assert mv.tags["gate.result"] == "rejected" and mv.tags["gate.reason"]
    assert mv.tags["gate.int8"] == ("accepted" if gate["int8"]["passed"] else "refused")


def test_nulls_and_unknown_labels_stop_training(pipeline) -> None:
    paths, params, s = pipeline
    rows = [
        {
            "doc_id": f"d{i}",
            "text": f"text {i}",
            "label": "card_arrival",
            "tenant": "bank",
            "type": "q",
        }
        for i in range(20)
    ]
    rows[0]["text"] = None
    rows[1]["label"] = "definitely_not_a_label"
    paths.snapshot.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(paths.snapshot, index=False)
    with pytest.raises(ValidationFailed, match="not_be_null"):
        run_pipeline(paths, params, s, stages=STAGES[1:])
    assert not paths.prepared.exists(), "training must not start after a failed validation"
    report = json.loads((paths.metrics / "validate.json").read_text())
    assert report["success"] is False and report["critical_failures"] >= 2


def test_empty_extract_fails(pipeline, tmp_path) -> None:
    paths, params, s = pipeline
    empty = tmp_path / "empty.csv"
    empty.write_text("text,category\n")
    from semflow.sources.base import FieldMapping
    from semflow.sources.files import FileSource

    src = FileSource(
        "empty",
        empty,
        FieldMapping(
            id="@row", text="text", labels="category", updated_at=None, tenant_value="bank"
        ),
    )
    info = run_stage("snapshot", paths, params, s, source=src)
    assert info["rows"] == 0
    with pytest.raises(ValidationFailed, match="row_count"):
        run_stage("validate", paths, params, s)


def test_invalid_params_name_the_key() -> None:
    raw = load_pipeline_params().raw()
    with pytest.raises(SettingsError, match=r"classifier\.C"):
        parse_params(raw, {"classifier.C": -1})
    with pytest.raises(SettingsError, match=r"ranker\.nonsense"):
        parse_params(raw, {"ranker.nonsense": 1})
    with pytest.raises(SettingsError, match=r"finetune\.loss: Input should be 'mnrl' or 'proxy'"):
        parse_params(raw, {"finetune.loss": "triplet"})
    with pytest.raises(SettingsError, match="unknown stage"):
        run_stage("nope", Paths(Path("/nonexistent")), parse_params(raw))


# -- DVC S3 remote ----------------------------------------------------------------
"""`dvc push` / `dvc pull` through an S3 remote served by moto (server mode, over HTTP)."""

DVC = str(Path(sys.executable).with_name("dvc"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("dvc_s3", reason="the S3 remote needs the dvc-s3 plugin")
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="semflow")
    yield url
    server.stop()


def _run(cwd: Path, *args: str) -> str:
    proc = run_tree(list(args), cwd=cwd, env=os.environ, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)} failed: {proc.stderr[-1500:]}"
    return proc.stdout


def test_push_pull_through_s3_remote(moto_s3: str, tmp_path: Path) -> None:
    import boto3

    repo = tmp_path / "repo"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _run(repo, DVC, "init", "-q")
    # The same remote settings the project's .dvc/config documents (MinIO endpoint).
    _run(repo, DVC, "remote", "add", "-d", "s3", "s3://semflow/dvc")
    _run(repo, DVC, "remote", "modify", "s3", "endpointurl", moto_s3)
    data = repo / "data" / "snapshot.csv"
    data.parent.mkdir()
    data.write_text("doc_id,text,label\n1,lost my card,card_lost\n2,top up failed,top_up\n")
    _run(repo, DVC, "add", "data/snapshot.csv")
    _run(repo, DVC, "push")

    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket="semflow")[
            "Contents"
        ]
    ]
    assert keys and all(k.startswith("dvc/") for k in keys)

    original = data.read_text()
    data.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    _run(repo, DVC, "pull")
    assert data.read_text() == original


# -- dvc repro -----------------------------------------------------------------------
def _tracked_copy(dst: Path) -> None:
    """The repo's tracked files (as in the working tree) in a fresh git repo at `dst`."""
    repo = Path(__file__).resolve().parents[2]
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = repo / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = run_tree([DVC, *args], cwd=repo, env=env, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def _ran(out: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in out}


def test_dvc_repro_then_cached_then_exp_run_reruns_only_dependents(semflow_home, tmp_path):
    import yaml

    from semflow.sync import run_sync
    from semflow.training.params import _set_dotted

    run_sync(
        small_source(tmp_path), Services.from_settings(get_settings())
    )  # what `snapshot` exports
    repo = tmp_path / "repo"
    _tracked_copy(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in {**small_overrides(), "finetune.max_pairs": 120}.items():
        _set_dotted(params, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd)

    first = _dvc(repo, "repro")
    assert _ran(first) == set(STAGES), first[-3000:]
    assert json.loads((repo / "metrics" / "evaluate.json").read_text())["classifier"]["accuracy"]
    lock = (repo / "dvc.lock").read_text()

    # Nothing changed: only the (always re-read) snapshot runs; its output is the same, so
    # nothing downstream reruns and dvc.lock stays as it was.
    second = _dvc(repo, "repro")
    assert _ran(second) <= {"snapshot"}, second[-3000:]
    assert (repo / "dvc.lock").read_text() == lock

    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")
    exp = _dvc(repo, "exp", "run", "-S", "classifier.C=3")
    assert _ran(exp) - {"snapshot"} == {"classifier", "evaluate", "register"}, exp[-3000:]

    # Code is tracked per stage: an edit of the evaluate stage's module reruns evaluate, not
    # the fine-tune; its metrics come out the same, so register does not rerun either.
    stage_mod = repo / "src" / "semflow" / "training" / "stages" / "evaluate.py"
    stage_mod.write_text(stage_mod.read_text() + "\n# edited\n")
    edited = _dvc(repo, "repro")
    assert _ran(edited) - {"snapshot"} == {"evaluate"}, edited[-3000:]
