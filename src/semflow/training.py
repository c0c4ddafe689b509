"""The training pipeline: one function per stage, shared by `dvc repro`, the DAGs and tests.

snapshot -> validate -> prepare -> finetune -> embed -> classifier -> ranker -> evaluate
-> register. Every stage reads and writes files under a `Paths` root (the repo for DVC,
`$SEMFLOW_HOME/pipeline` for Airflow, a tmp dir in tests) and logs to one MLflow run tree.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from semflow.config import REPO_ROOT, Settings, get_settings, load_params
from semflow.errors import SemflowError, SettingsError
from semflow.models.finetune import Loss

log = logging.getLogger("semflow.training")

STAGES = (
    "snapshot",
    "validate",
    "prepare",
    "finetune",
    "embed",
    "classifier",
    "ranker",
    "evaluate",
    "register",
)
COLUMNS = ["doc_id", "text", "label", "tenant", "type"]


# -- params ---------------------------------------------------------------------------
class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseParams(_P):
    seed: int = 13
    subset: int | None = Field(default=None, ge=10)
    max_labels: int | None = Field(default=None, ge=2)
    test_subset: int | None = Field(default=None, ge=10)
    tenant: str = "bank"


class SnapshotParams(_P):
    fields: list[str] = ["doc_id", "text", "labels", "tenant", "type"]
    sync_if_empty: bool = True


class DriftParams(_P):
    label_tvd_max: float = Field(default=0.25, ge=0, le=1)
    length_ks_max: float = Field(default=0.2, ge=0, le=1)
    centroid_cosine_max: float = Field(default=0.05, ge=0, le=2)
    sample: int = Field(default=1000, ge=10)
    critical: bool = False


class ValidateParams(_P):
    reference: str | None = "data/banking77/train.csv"
    min_rows: int = Field(default=1, ge=1)
    min_text_chars: int = Field(default=1, ge=0)
    max_text_chars: int = Field(default=4000, ge=1)
    max_duplicate_ratio: float = Field(default=0.05, ge=0, le=1)
    min_examples_per_label: int = Field(default=5, ge=1)
    allowed_labels: str | None = "data/banking77/categories.json"
    drift: DriftParams = DriftParams()


class PrepareParams(_P):
    val_size: float = Field(default=0.1, gt=0, lt=0.5)
    test_size: float = Field(default=0.1, gt=0, lt=0.5)
    external_test: str | None = "data/banking77/test.csv"


class FinetuneParams(_P):
    enabled: bool = True
    loss: Loss = "mnrl"
    epochs: int = Field(default=1, ge=1, le=20)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=3e-5, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    max_pairs: int = Field(default=20000, ge=1)
    max_seq_length: int = Field(default=64, ge=8, le=512)
    scale: float = Field(default=20.0, gt=0)
    margin: float = Field(default=0.0, ge=0, lt=1)
    freeze_layers: int = Field(default=0, ge=0, le=24)


class ClassifierParams(_P):
    C: float = Field(default=10.0, gt=0)
    max_iter: int = Field(default=2000, ge=10)
    target_precision: float = Field(default=0.95, gt=0, le=1)
    refit_on_val: bool = False


class RankerParams(_P):
    candidates: int = Field(default=50, ge=2)
    k: int = Field(default=10, ge=1)
    step: float = Field(default=0.05, gt=0, le=0.5)
    features: list[str] = ["semantic", "lexical"]
    max_queries: int = Field(default=500, ge=1)


class EvaluateParams(_P):
    k: int = Field(default=10, ge=1)


class RegisterParams(_P):
    model_name: str = Field(default="semflow", pattern=r"^[A-Za-z0-9_.-]+$")
    floors: dict[str, float] = {"classifier.accuracy": 0.5, "search.ndcg@10": 0.5}
    compare: list[str] = ["classifier.accuracy", "classifier.macro_f1", "search.ndcg@10"]
    tolerance: float = Field(default=0.01, ge=0, le=1)


class PipelineParams(_P):
    base: BaseParams = BaseParams()
    snapshot: SnapshotParams = SnapshotParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    prepare: PrepareParams = PrepareParams()
    finetune: FinetuneParams = FinetuneParams()
    classifier: ClassifierParams = ClassifierParams()
    ranker: RankerParams = RankerParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(default=RegisterParams(), alias="register")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def section(self, name: str) -> dict[str, Any]:
        attr = f"{name}_" if name in ("validate", "register") else name
        return getattr(self, attr).model_dump()

    def raw(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise SettingsError(f"params override {key!r}: {p!r} is not a section")
    cur[parts[-1]] = value


def parse_params(
    raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> PipelineParams:
    """Validate params (with dotted overrides); the error names the bad key."""
    data = copy.deepcopy(dict(raw))
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    try:
        return PipelineParams.model_validate(data)
    except ValidationError as err:
        parts = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            for e in err.errors()
        ]
        raise SettingsError("invalid params.yaml: " + "; ".join(parts)) from None


def load_pipeline_params(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> PipelineParams:
    return parse_params(load_params(path), overrides)


# -- paths ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Paths:
    root: Path
    repo: Path = REPO_ROOT  # where params' relative paths (the sample data) live

    @classmethod
    def for_home(cls, settings: Settings | None = None) -> Paths:
        return cls((settings or get_settings()).home / "pipeline")

    def resolve(self, rel: str | None) -> Path | None:
        """Params paths are relative to the repo (sample data) unless absolute."""
        if rel is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.repo / p

    snapshot = property(lambda self: self.root / "data" / "snapshot" / "documents.csv")
    prepared = property(lambda self: self.root / "data" / "prepared")
    features = property(lambda self: self.root / "data" / "features" / "embeddings.npz")
    embedder = property(lambda self: self.root / "models" / "embedder")
    classifier = property(lambda self: self.root / "models" / "classifier")
    ranker = property(lambda self: self.root / "models" / "ranker.json")
    bundle = property(lambda self: self.root / "models" / "bundle")
    metrics = property(lambda self: self.root / "metrics")
    plots = property(lambda self: self.root / "plots")
    reports = property(lambda self: self.root / "reports" / "validation")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def _read_docs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SemflowError(f"{path} does not exist; run the stage that writes it first")
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def _sample_frame(df: pd.DataFrame, base: BaseParams, rows: int | None) -> pd.DataFrame:
    """Keep the first `max_labels` labels (sorted) and a seeded stratified `rows` subset."""
    if base.max_labels is not None:
        keep = sorted(df["label"].dropna().unique())[: base.max_labels]
        df = df[df["label"].isin(keep)]
    if rows is not None and len(df) > rows:
        frac = rows / len(df)
        df = df.groupby("label", group_keys=False, dropna=False).sample(
            frac=frac, random_state=base.seed
        )
    return df.sort_values("doc_id", kind="stable").reset_index(drop=True)


# -- MLflow stage logging -------------------------------------------------------------
class _Tracker:
    """Logs one stage into the pipeline's run tree; never fails the stage on its own."""

    def __init__(self, paths: Paths, params: PipelineParams, settings: Settings, stage: str):
        self.paths, self.params, self.settings, self.stage = paths, params, settings, stage
        self.uri = settings.tracking_uri

    def tags(self) -> dict[str, str]:
        from semflow import registry

        data_hash = registry.dvc_data_hash(self.paths.snapshot)
        return {"semflow.data_hash": data_hash, "semflow.git_commit": registry.git_commit()}

    def run(self, fn: Callable[[Any], Any]) -> Any:
        import contextlib

        from semflow import registry

        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        tags = self.tags()
        key = registry.pipeline_key(
            tags["semflow.data_hash"], tags["semflow.git_commit"], self.params.raw()
        )
        parent = registry.parent_run_id(self.uri, key, tags)
        with registry.stage_run(self.uri, parent, self.stage, tags) as run:
            import mlflow

            with contextlib.suppress(Exception):
                mlflow.log_params(
                    {
                        f"{self.stage}.{k}": v
                        for k, v in _flat(self.params.section(self.stage)).items()
                    }
                    if self.stage in _SECTIONS
                    else {}
                )
            return fn(run)


_SECTIONS = {
    "snapshot",
    "validate",
    "prepare",
    "finetune",
    "classifier",
    "ranker",
    "evaluate",
    "register",
}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _log_metrics(metrics: Mapping[str, Any]) -> None:
    import mlflow

    flat = {
        k: float(v)
        for k, v in _flat(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if flat:
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in flat.items()})


# -- stages ---------------------------------------------------------------------------
def snapshot(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    source: Any | None = None,
) -> dict[str, Any]:
    """Export labelled documents from the live index; sync the sample first on a fresh clone."""
    from semflow.index import open_store

    s = settings or get_settings()
    store = open_store(s)
    if store.live_generation() is None:
        if not params.snapshot.sync_if_empty:
            raise SemflowError("the index has no live generation; run a sync first")
        from semflow.sample import banking77_source
        from semflow.sync import run_sync

        log.info("no index yet: syncing the sample first")
        run_sync(
            source or banking77_source("train", tenant=params.base.tenant), settings=s, store=store
        )
    rows = []
    with store.open_live() as index:
        for _, p in index.iter_payloads(fields=params.snapshot.fields):
            labels = p.get("labels") or []
            rows.append(
                {
                    "doc_id": p.get("doc_id"),
                    "text": p.get("text"),
                    "label": labels[0] if labels else None,
                    "tenant": p.get("tenant"),
                    "type": p.get("type"),
                }
            )
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df[df["tenant"] == params.base.tenant] if len(df) else df
    df = _sample_frame(df, params.base, params.base.subset) if len(df) else df
    paths.snapshot.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths.snapshot, index=False)
    info = {"rows": len(df), "labels": int(df["label"].nunique()) if len(df) else 0}
    _write_json(paths.metrics / "snapshot.json", info)
    return info


def _reference(paths: Paths, params: PipelineParams) -> pd.DataFrame | None:
    ref_path = paths.resolve(params.validate_.reference)
    if ref_path is None:
        return None
    ref = pd.read_csv(ref_path, dtype=str, keep_default_na=False)
    ref = ref.rename(columns={"category": "label"})
    ref["doc_id"] = [f"ref-{i}" for i in range(len(ref))]
    return _sample_frame(ref, params.base, params.base.subset)


def _encoder(settings: Settings) -> Callable[[list[str]], np.ndarray]:
    from semflow.embedding import Embedder

    emb = Embedder.from_settings(settings)
    return lambda texts: emb.encode(texts)


def validate(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """GX suites + drift on the snapshot; raises ValidationFailed (stops the pipeline)."""
    from semflow.validation import ValidationFailed, validate_dataset

    s = settings or get_settings()
    df = _read_docs(paths.snapshot)
    allowed = None
    allowed_path = paths.resolve(params.validate_.allowed_labels)
    if allowed_path is not None:
        allowed = json.loads(allowed_path.read_text())
        if isinstance(allowed, dict):
            allowed = list(allowed)
    failure: ValidationFailed | None = None
    try:
        report = validate_dataset(
            df,
            params.section("validate"),
            allowed_labels=allowed,
            reference=_reference(paths, params),
            encode=encode or _encoder(s),
            report_dir=paths.reports,
            seed=params.base.seed,
        )
    except ValidationFailed as err:
        failure, report = err, err.report
    out = {
        "success": report.success,
        "rows": report.rows,
        "critical_failures": len(report.critical_failures),
        "warnings": len(report.warnings),
        "drift": report.drift,
    }
    _write_json(paths.metrics / "validate.json", out)
    try:
        _Tracker(paths, params, s, "validate").run(lambda run: _log_validation(paths, out))
    except Exception as err:  # tracking is best effort; the data verdict is what matters
        log.warning("could not log validation to MLflow: %s", err)
    if failure is not None:
        raise failure
    return out


def _log_validation(paths: Paths, out: dict[str, Any]) -> None:
    import mlflow

    _log_metrics({k: v for k, v in out.items() if k != "success"})
    mlflow.set_tag("validation.success", str(out["success"]))
    if paths.reports.is_dir():
        mlflow.log_artifacts(str(paths.reports), artifact_path="validation")


def prepare(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Stratified, seeded train/val(/test) split; the external test split is filtered to known labels."""
    from sklearn.model_selection import train_test_split

    df = _read_docs(paths.snapshot).dropna(subset=["text", "label"])
    seed = params.base.seed
    ext = paths.resolve(params.prepare.external_test)
    if ext is None:
        rest, test = train_test_split(
            df, test_size=params.prepare.test_size, stratify=df["label"], random_state=seed
        )
    else:
        rest = df
        test = pd.read_csv(ext, dtype=str, keep_default_na=False).rename(
            columns={"category": "label"}
        )
        test = test[test["label"].isin(set(df["label"]))]
        test.insert(0, "doc_id", [f"test-{i}" for i in range(len(test))])
        test = _sample_frame(
            test, params.base.model_copy(update={"max_labels": None}), params.base.test_subset
        )
    train, val = train_test_split(
        rest, test_size=params.prepare.val_size, stratify=rest["label"], random_state=seed
    )
    paths.prepared.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("val", val), ("test", test)):
        part[["doc_id", "text", "label"]].sort_values("doc_id").to_csv(
            paths.prepared / f"{name}.csv", index=False
        )
    info = {
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "labels": int(df["label"].nunique()),
    }
    _write_json(paths.metrics / "prepare.json", info)
    return info


def _split(paths: Paths, name: str) -> pd.DataFrame:
    return _read_docs(paths.prepared / f"{name}.csv")


def finetune(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Fine-tune the embedder on same-label pairs (or record the base model when disabled)."""
    from semflow.embedding import model_version

    s = settings or get_settings()
    out = paths.embedder
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    p = params.finetune
    if not p.enabled:
        info = {"finetuned": False, "version": model_version(s.resolved_model_path, s.model_name)}
        _write_json(out / "embedder.json", info)
        return info
    from semflow.models.finetune import finetune as run_finetune

    train = _split(paths, "train")
    res = run_finetune(
        s.resolved_model_path,
        train["text"].tolist(),
        train["label"].tolist(),
        out / "model",
        loss=p.loss,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        warmup_ratio=p.warmup_ratio,
        max_pairs=p.max_pairs,
        max_seq_length=p.max_seq_length,
        scale=p.scale,
        margin=p.margin,
        freeze_layers=p.freeze_layers,
        seed=params.base.seed,
    )
    info = {
        "finetuned": True,
        "version": model_version(out / "model", f"{s.model_name}-semflow-ft"),
        "steps": res.steps,
        "loss": p.loss,
        "examples": res.examples,
        "seconds": round(res.seconds, 1),
        "final_loss": res.final_loss,
    }
    _write_json(out / "embedder.json", info)
    _write_json(paths.metrics / "finetune.json", {k: v for k, v in info.items() if k != "version"})
    return info


def embedder_for(paths: Paths, settings: Settings | None = None) -> Any:
    """The pipeline's embedder: the fine-tuned model when there is one, else the base."""
    from semflow.embedding import Embedder, LRUCache

    s = settings or get_settings()
    meta_path = paths.embedder / "embedder.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"finetuned": False}
    if meta.get("finetuned"):
        return Embedder(paths.embedder / "model", f"{s.model_name}-semflow-ft", batch_size=128)
    return Embedder(s.resolved_model_path, s.model_name, batch_size=128, cache=LRUCache(0))


def embed(paths: Paths, params: PipelineParams, settings: Settings | None = None) -> dict[str, Any]:
    """Embed train/val/test once; later stages read the arrays."""
    emb = embedder_for(paths, settings)
    arrays = {}
    for name in ("train", "val", "test"):
        arrays[name] = emb.encode(_split(paths, name)["text"].tolist())
    paths.features.parent.mkdir(parents=True, exist_ok=True)
    np.savez(paths.features, **arrays)
    return {"version": emb.version, **{k: int(v.shape[0]) for k, v in arrays.items()}}


def _features(paths: Paths) -> dict[str, np.ndarray]:
    if not paths.features.is_file():
        raise SemflowError(f"{paths.features} does not exist; run the embed stage first")
    with np.load(paths.features) as z:
        return {k: z[k] for k in z.files}


def classifier(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    import joblib

    from semflow.models.classifier import train_classifier

    x = _features(paths)
    p = params.classifier
    res = train_classifier(
        x["train"],
        _split(paths, "train")["label"].tolist(),
        x["val"],
        _split(paths, "val")["label"].tolist(),
        C=p.C,
        max_iter=p.max_iter,
        target_precision=p.target_precision,
        refit_on_val=p.refit_on_val,
        seed=params.base.seed,
    )
    paths.classifier.mkdir(parents=True, exist_ok=True)
    joblib.dump(res.model, paths.classifier / "classifier.joblib")
    info = {
        "threshold": res.threshold,
        "temperature": res.temperature,
        "val_accuracy": res.val_accuracy,
        "val_coverage": res.val_coverage,
    }
    _write_json(paths.classifier / "classifier.json", info)
    _write_json(paths.metrics / "classifier.json", info)
    return info


def _rank_groups(
    q_vecs: np.ndarray,
    q_texts: Sequence[str],
    q_labels: Sequence[str],
    c_vecs: np.ndarray,
    c_texts: Sequence[str],
    c_labels: Sequence[str],
    features: Sequence[str],
    n_cand: int,
) -> list[Any]:
    from semflow.models.metrics import topk_neighbours
    from semflow.models.ranker import RankGroup, feature_matrix

    idx = topk_neighbours(q_vecs, c_vecs, n_cand)
    c_labels_arr = np.asarray(c_labels)
    groups = []
    for qi, cand in enumerate(idx):
        fm = feature_matrix(
            q_vecs[qi], c_vecs[cand], q_texts[qi], [c_texts[j] for j in cand], None, features
        )
        groups.append(RankGroup(fm, (c_labels_arr[cand] == q_labels[qi]).astype(float)))
    return groups


def ranker(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Learn ranker weights on validation queries over training candidates."""
    from semflow.models.ranker import fit_weights, groups_ndcg

    p = params.ranker
    if not p.features or p.features[0] != "semantic":
        raise SettingsError("ranker.features must start with 'semantic'")
    x = _features(paths)
    train, val = _split(paths, "train"), _split(paths, "val")
    n = min(p.max_queries, len(val))
    groups = _rank_groups(
        x["val"][:n],
        val["text"].tolist()[:n],
        val["label"].tolist()[:n],
        x["train"],
        train["text"].tolist(),
        train["label"].tolist(),
        p.features,
        p.candidates,
    )
    weights, score = fit_weights(groups, p.features, k=p.k, step=p.step)
    cosine = np.zeros(len(p.features))
    cosine[0] = 1.0
    info = {
        "weights": weights,
        "val_ndcg": score,
        "val_cosine_ndcg": groups_ndcg(groups, cosine, p.k),
    }
    _write_json(paths.ranker, info)
    return info


def _load_bundle_parts(paths: Paths) -> tuple[Any, dict[str, Any], dict[str, float]]:
    import joblib

    clf = joblib.load(paths.classifier / "classifier.joblib")
    info = json.loads((paths.classifier / "classifier.json").read_text())
    weights = {"semantic": 1.0}
    if paths.ranker.is_file():
        weights = json.loads(paths.ranker.read_text())["weights"]
    return clf, info, weights


def evaluate(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Test-set metrics, plots data, and `metrics/evaluate.json`."""
    from semflow.models.metrics import classification_metrics, search_metrics
    from semflow.models.ranker import groups_ndcg

    k = params.evaluate.k
    x = _features(paths)
    # The corpus is every labelled training document (train + val), as the index holds them.
    train = pd.concat([_split(paths, "train"), _split(paths, "val")], ignore_index=True)
    x["train"] = np.vstack([x["train"], x["val"]])
    test = _split(paths, "test")
    clf, info, weights = _load_bundle_parts(paths)
    proba = clf.predict_proba(x["test"])
    pred = clf.classes_[proba.argmax(axis=1)]
    y = test["label"].to_numpy()
    cm = classification_metrics(y.tolist(), pred.tolist())
    accepted = proba.max(axis=1) >= info["threshold"]
    cls = {
        "accuracy": cm["accuracy"],
        "macro_f1": cm["macro_f1"],
        "coverage": float(accepted.mean()) if len(y) else 0.0,
        "selective_accuracy": float((pred[accepted] == y[accepted]).mean())
        if accepted.any()
        else 0.0,
        "threshold": info["threshold"],
    }
    search = search_metrics(x["test"], y.tolist(), x["train"], train["label"].tolist(), k)
    names = list(weights)
    groups = _rank_groups(
        x["test"],
        test["text"].tolist(),
        y.tolist(),
        x["train"],
        train["text"].tolist(),
        train["label"].tolist(),
        names,
        params.ranker.candidates,
    )
    wv = np.array([weights[n] for n in names])
    cosine = np.array([1.0 if n == "semantic" else 0.0 for n in names])
    metrics = {
        "classifier": cls,
        "search": search,
        "ranker": {
            f"ndcg@{k}": groups_ndcg(groups, wv, k),
            f"baseline_ndcg@{k}": groups_ndcg(groups, cosine, k),
        },
        "test_size": len(y),
    }
    _write_json(paths.metrics / "evaluate.json", metrics)
    paths.plots.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": y, "predicted": pred}).to_csv(
        paths.plots / "confusion.csv", index=False
    )
    pd.DataFrame(
        {
            "label": list(cm["per_class_f1"]),
            "f1": [round(v, 4) for v in cm["per_class_f1"].values()],
        }
    ).to_csv(paths.plots / "per_class_f1.csv", index=False)
    return metrics


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in _flat(metrics).items() if isinstance(v, int | float)}


def build_bundle(paths: Paths, params: PipelineParams, settings: Settings | None = None) -> Path:
    from semflow.models.bundle import Bundle

    emb = embedder_for(paths, settings)
    clf, info, weights = _load_bundle_parts(paths)
    meta = json.loads((paths.embedder / "embedder.json").read_text())
    bundle = Bundle(
        embedder_dir=paths.embedder / "model" if meta.get("finetuned") else None,
        embedder_version=emb.version,
        labels=[str(c) for c in clf.classes_],
        threshold=float(info["threshold"]),
        ranker_weights=weights,
        classifier=clf,
        model_name=params.register_.model_name,
        tags={"embedder_finetuned": str(bool(meta.get("finetuned")))},
    )
    if paths.bundle.exists():
        shutil.rmtree(paths.bundle)
    return bundle.save(paths.bundle)


def register(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Bundle -> MLflow model version -> promotion gate; writes `metrics/register.json`."""
    from semflow import registry

    s = settings or get_settings()
    p = params.register_
    metrics_path = paths.metrics / "evaluate.json"
    if not metrics_path.is_file():
        raise SemflowError(f"{metrics_path} does not exist; run the evaluate stage first")
    metrics = json.loads(metrics_path.read_text())
    flat = flat_metrics(metrics)
    bundle_dir = build_bundle(paths, params, s)
    examples = _split(paths, "test")["text"].head(3).tolist()

    def _do(run: Any) -> dict[str, Any]:
        _log_metrics(metrics)
        version = registry.log_bundle(
            bundle_dir,
            tracking_uri=s.tracking_uri,
            name=p.model_name,
            metrics=flat,
            example_texts=examples,
        )
        gate = registry.promote(
            s.tracking_uri,
            version,
            floors=p.floors,
            tolerance=p.tolerance,
            compare=p.compare,
            name=p.model_name,
            run_id=run.info.run_id,
        )
        return gate.to_dict()

    result = _Tracker(paths, params, s, "register").run(_do)
    _write_json(
        paths.metrics / "register.json", {k: v for k, v in result.items() if k != "version"}
    )
    return result


STAGE_FUNCS: dict[str, Callable[..., dict[str, Any]]] = {
    "snapshot": snapshot,
    "validate": validate,
    "prepare": prepare,
    "finetune": finetune,
    "embed": embed,
    "classifier": classifier,
    "ranker": ranker,
    "evaluate": evaluate,
    "register": register,
}
_LOGGED_BY_TRACKER = {"validate", "register"}


def run_stage(
    name: str, paths: Paths, params: PipelineParams, settings: Settings | None = None, **kw: Any
) -> dict[str, Any]:
    """Run one stage and log its params/metrics as a nested MLflow run."""
    if name not in STAGE_FUNCS:
        raise SettingsError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    s = settings or get_settings()
    result = STAGE_FUNCS[name](paths, params, s, **kw)
    if name not in _LOGGED_BY_TRACKER:
        try:
            _Tracker(paths, params, s, name).run(lambda run: _log_metrics(result))
        except Exception as err:  # tracking is best effort for the data stages
            log.warning("could not log stage %s to MLflow: %s", name, err)
    log.info("stage %s: %s", name, json.dumps(result, default=str)[:500])
    return result


def run_pipeline(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    stages: Sequence[str] = STAGES,
) -> dict[str, dict[str, Any]]:
    """Run the stages in order; any failure stops the run (validation stops training)."""
    return {name: run_stage(name, paths, params, settings) for name in stages}


def stage_main(name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of `training/<stage>.py` (DVC): repo paths, params.yaml, exit code 1 + a
    sentence on a SemflowError instead of a traceback."""
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        # DVC runs every stage from the directory of dvc.yaml: that checkout is the root.
        root = Path.cwd()
        params = load_pipeline_params(root / "params.yaml")
        result = run_stage(name, Paths(root, repo=root), params)
    except SemflowError as err:
        print(f"semflow {name}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


# -- Airflow entry points and reindex --------------------------------------------------
def dag_stage(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One stage under `$SEMFLOW_HOME/pipeline` with params.yaml + DAG-run overrides."""
    s = get_settings()
    params = load_pipeline_params(overrides=overrides)
    paths = Paths.for_home(s)
    if name == "ranker" and paths.ranker.exists():
        paths.ranker.unlink()  # a failed/skipped ranker must not leave stale weights behind
    return json.loads(json.dumps(run_stage(name, paths, params, s), default=str))


class ReindexRejected(SemflowError):
    """The rebuilt generation scored worse on the golden queries; the old one stays live."""


def _bundle_embedder(bundle: Any, settings: Settings) -> Any:
    from semflow.embedding import Embedder

    name = bundle.embedder_version.rsplit("@", 1)[0]
    return Embedder(bundle.embedder_dir or settings.resolved_model_path, name, batch_size=128)


def golden_ndcg(
    index: Any, embedder: Any, queries: pd.DataFrame, tenant: str, k: int = 10
) -> float:
    """Mean nDCG@k of labelled queries; relevant = a hit carrying the query's label."""
    from semflow.models.ranker import ndcg_at_k

    vecs = embedder.encode(queries["text"].tolist())
    vals = []
    for vec, label in zip(vecs, queries["label"], strict=True):
        hits = index.search(vec, tenant, top_k=k)
        vals.append(
            ndcg_at_k(
                [float(label in (h.payload.get("labels") or [])) for h in hits], k, n_relevant=k
            )
        )
    return float(np.mean(vals)) if vals else 0.0


def reindex_if_changed(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    golden: pd.DataFrame | None = None,
    max_golden: int = 200,
) -> dict[str, Any]:
    """Rebuild the index with the champion's embedder when it differs from the live one.

    The new generation is filled from the live payloads, checked on golden queries, and
    published only if its nDCG@10 is not below the old generation's.
    """
    from semflow import registry
    from semflow.index import open_store

    s = settings or get_settings()
    champ = registry.load_champion(s.tracking_uri, params.register_.model_name)
    if champ is None:
        return {"reindexed": False, "reason": "no champion registered"}
    store = open_store(s)
    live_version = store.live_model_version()
    if live_version is None:
        return {"reindexed": False, "reason": "no live index generation"}
    if live_version == champ.embedder_version:
        return {"reindexed": False, "reason": "the index already uses the champion's embedder"}
    if golden is None:
        golden = _split(paths, "test")
    golden = golden.head(max_golden)
    new_emb = _bundle_embedder(champ, s)
    from semflow.embedding import Embedder

    base = Embedder(s.resolved_model_path, s.model_name)
    old_emb = base if base.version == live_version else None
    if old_emb is None:
        # The live generation was built by an earlier fine-tuned bundle: find it to score it.
        prev = registry.version_with_embedder(
            s.tracking_uri, live_version, params.register_.model_name
        )
        if prev is not None:
            old_emb = _bundle_embedder(
                registry.load_version(s.tracking_uri, params.register_.model_name, prev), s
            )
    with store.open_live() as live:
        old_gen = live.generation
        old_score = golden_ndcg(live, old_emb, golden, params.base.tenant) if old_emb else None
        ids, payloads = [], []
        for pid, payload in live.iter_payloads(fields=list(_PAYLOAD_FIELDS)):
            ids.append(pid)
            payloads.append({**payload, "model_version": new_emb.version})
    vectors = new_emb.encode([p.get("text") or "" for p in payloads])
    if champ.embedder_dir is not None:
        from semflow.embedding import install_embedder

        # Installed before the switch so the next sync embeds with the same model.
        install_embedder(s, Path(champ.embedder_dir), new_emb.version)
    with store.writer(new_emb.version, new_emb.dimension, fresh=True) as w:
        for i in range(0, len(ids), 1000):
            w.upsert(ids[i : i + 1000], vectors[i : i + 1000], payloads[i : i + 1000])
        new_score = golden_ndcg(w, new_emb, golden, params.base.tenant)
        if old_score is not None and new_score < old_score:
            raise ReindexRejected(
                f"the rebuilt index scores nDCG@10 {new_score:.4f} on the golden queries, below the "
                f"live generation's {old_score:.4f}; generation {old_gen} stays live"
            )
    return {
        "reindexed": True,
        "old_generation": old_gen,
        "generation": store.live_generation(),
        "model_version": new_emb.version,
        "golden_ndcg": new_score,
        "old_golden_ndcg": old_score,
        "points": len(ids),
    }


_PAYLOAD_FIELDS = (
    "source",
    "doc_id",
    "tenant",
    "type",
    "title",
    "text",
    "labels",
    "metadata",
    "updated_at",
    "content_hash",
    "model_version",
    "truncated",
)


def dag_reindex(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    s = get_settings()
    return reindex_if_changed(Paths.for_home(s), load_pipeline_params(overrides=overrides), s)
