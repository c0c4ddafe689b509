"""What every stage shares: params, paths, file helpers, MLflow logging and the runner.

A stage's outputs depend on this module, its own `stages/<name>.py` and the library
modules that one imports; `dvc.yaml` lists exactly those, so editing one stage reruns
that stage and what follows it, and nothing before it.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
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
    knn_k: int = Field(default=10, ge=1)
    knn_weight: float = Field(default=0.0, ge=0, le=1)
    knn_temperature: float = Field(default=0.02, gt=0)


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


def gate_weakenings(base: RegisterParams, new: RegisterParams) -> list[str]:
    """How `new` loosens the promotion gate of `base` (params.yaml): a floor removed or
    lowered, the tolerance raised, a metric dropped from the champion comparison, or another
    registered model (whose champion the candidate would be compared with instead)."""
    out = []
    for metric, floor in base.floors.items():
        if metric not in new.floors:
            out.append(f"removes the floor on {metric} ({floor})")
        elif new.floors[metric] < floor:
            out.append(f"lowers the floor on {metric} from {floor} to {new.floors[metric]}")
    if new.tolerance > base.tolerance:
        out.append(f"raises the tolerance from {base.tolerance} to {new.tolerance}")
    for metric in base.compare:
        if metric not in new.compare:
            out.append(f"stops comparing {metric} with the champion")
    if new.model_name != base.model_name:
        out.append(f"registers as {new.model_name!r} instead of {base.model_name!r}")
    return out


def check_gate_overrides(
    params: PipelineParams,
    *,
    force: bool = False,
    forced_by: str | None = None,
    reason: str | None = None,
    base: PipelineParams | None = None,
) -> dict[str, str] | None:
    """Refuse overrides that weaken the promotion gate unless an operator forces them; a forced
    run is logged and returns what `promote` records on the version (else None)."""
    weaker = gate_weakenings((base or load_pipeline_params()).register_, params.register_)
    if not weaker:
        return None
    changes = "; ".join(weaker)
    if not force:
        raise SettingsError(
            f"the run's overrides weaken the promotion gate ({changes}); run it with "
            "force: true and a reason to register with a weaker gate"
        )
    who, why = forced_by or "unknown", reason or "none given"
    log.warning("promotion gate weakened by %s (reason: %s): %s", who, why, changes)
    return {"by": who, "reason": why, "changes": changes}


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


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def read_docs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SemflowError(f"{path} does not exist; run the stage that writes it first")
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def sample_frame(df: pd.DataFrame, base: BaseParams, rows: int | None) -> pd.DataFrame:
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
class Tracker:
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
                        for k, v in flatten(self.params.section(self.stage)).items()
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


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_metrics(metrics: Mapping[str, Any]) -> None:
    import mlflow

    flat = {
        k: float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if flat:
        mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in flat.items()})


def read_split(paths: Paths, name: str) -> pd.DataFrame:
    return read_docs(paths.prepared / f"{name}.csv")


def load_features(paths: Paths) -> dict[str, np.ndarray]:
    if not paths.features.is_file():
        raise SemflowError(f"{paths.features} does not exist; run the embed stage first")
    with np.load(paths.features) as z:
        return {k: z[k] for k in z.files}


def load_bundle_parts(paths: Paths) -> tuple[Any, dict[str, Any], dict[str, float]]:
    import joblib

    clf = joblib.load(paths.classifier / "classifier.joblib")
    info = json.loads((paths.classifier / "classifier.json").read_text())
    weights = {"semantic": 1.0}
    if paths.ranker.is_file():
        weights = json.loads(paths.ranker.read_text())["weights"]
    return clf, info, weights


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, int | float)}


def stage_function(name: str) -> Callable[..., dict[str, Any]]:
    """`stages/<name>.py`'s function of the same name, imported when first run."""
    if name not in STAGES:
        raise SettingsError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    fn: Callable[..., dict[str, Any]] = getattr(
        importlib.import_module(f"semflow.training.stages.{name}"), name
    )
    return fn


_LOGGED_BY_TRACKER = {"validate", "register"}


def run_stage(
    name: str, paths: Paths, params: PipelineParams, settings: Settings | None = None, **kw: Any
) -> dict[str, Any]:
    """Run one stage and log its params/metrics as a nested MLflow run."""
    fn = stage_function(name)
    s = settings or get_settings()
    result = fn(paths, params, s, **kw)
    if name not in _LOGGED_BY_TRACKER:
        try:
            Tracker(paths, params, s, name).run(lambda run: log_metrics(result))
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


# -- Airflow entry point ---------------------------------------------------------------
def dag_stage(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    forced_by: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One stage under `$SEMFLOW_HOME/pipeline` with params.yaml + DAG-run overrides.

    Run conf is not params.yaml's review: overrides may not weaken the promotion gate of
    `register` unless `force` (an operator's decision, recorded on the model version)."""
    s = get_settings()
    params = load_pipeline_params(overrides=overrides)
    kw: dict[str, Any] = {}
    if name == "register":
        forced = check_gate_overrides(params, force=force, forced_by=forced_by, reason=reason)
        if forced:
            kw["forced"] = forced
    paths = Paths.for_home(s)
    if name == "ranker" and paths.ranker.exists():
        paths.ranker.unlink()  # a failed/skipped ranker must not leave stale weights behind
    return json.loads(json.dumps(run_stage(name, paths, params, s, **kw), default=str))
