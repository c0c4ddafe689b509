"""What every stage shares: paths, file helpers, MLflow logging and the runner.

A stage's outputs depend on this module, the params schema (`params.py`), its own
`stages/<name>.py` and the library modules that one imports; `dvc.yaml` lists exactly those, so editing one stage reruns
that stage and what follows it, and nothing before it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semflow.config import REPO_ROOT, Settings, get_settings
from semflow.errors import SemflowError, SettingsError, Verdict
from semflow.training.params import (
    BaseParams,
    PipelineParams,
    load_pipeline_params,
)

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
    # the last training the retraining policy triggered (semflow.training.policy)
    retrain_state = property(lambda self: self.root / "state" / "retrain.json")


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
        from semflow.training.provenance import dvc_data_hash, git_commit

        data_hash = dvc_data_hash(self.paths.snapshot)
        return {"semflow.data_hash": data_hash, "semflow.git_commit": git_commit()}

    def run(self, fn: Callable[[Any], Any]) -> Any:
        import contextlib

        from semflow import registry
        from semflow.training.provenance import pipeline_key

        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        tags = self.tags()
        key = pipeline_key(tags["semflow.data_hash"], tags["semflow.git_commit"], self.params.raw())
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
# The last line stage_main prints: the stage's result, for the Airflow task that ran it.
RESULT_PREFIX = "semflow-result: "
# The exit code of a stage that stopped on a Verdict (bad data, bad params): not worth a retry.
VERDICT_EXIT = 3
# An operator's forced gate (who, why, what), handed from the Airflow task to `register`.
FORCED_ENV = "SEMFLOW_GATE_FORCED"


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
        kw: dict[str, Any] = {}
        if name == "register" and os.environ.get(FORCED_ENV):
            kw["forced"] = json.loads(os.environ[FORCED_ENV])
        result = run_stage(name, Paths(root, repo=root), params, **kw)
    except SemflowError as err:
        print(f"semflow {name}: {err}", file=sys.stderr)
        return VERDICT_EXIT if isinstance(err, Verdict) else 1
    print(RESULT_PREFIX + json.dumps(result, default=str))
    return 0
