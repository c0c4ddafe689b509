"""Stage `register`: bundle, MLflow model version and promotion gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from semflow.config import Settings, get_settings
from semflow.errors import SemflowError
from semflow.training.common import (
    Paths,
    Tracker,
    flat_metrics,
    load_bundle_parts,
    log_metrics,
    read_split,
    write_json,
)
from semflow.training.params import PipelineParams
from semflow.training.stages.embed import embedder_for


def build_bundle(paths: Paths, settings: Settings | None = None) -> Path:
    from semflow.models.bundle import Bundle

    s = settings or get_settings()
    emb = embedder_for(paths, s)
    clf, info, weights = load_bundle_parts(paths)
    meta = json.loads((paths.embedder / "embedder.json").read_text())
    bundle = Bundle(
        embedder_dir=paths.embedder / "model" if meta.get("finetuned") else None,
        embedder_version=emb.version,
        labels=[str(c) for c in clf.classes_],
        threshold=float(info["threshold"]),
        ranker_weights=weights,
        classifier=clf,
        registered_model=s.registered_model,
        tags={"embedder_finetuned": str(bool(meta.get("finetuned")))},
    )
    if paths.bundle.exists():
        shutil.rmtree(paths.bundle)
    return bundle.save(paths.bundle)


def register(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    forced: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Bundle -> MLflow model version -> promotion gate; writes `metrics/register.json`.
    `forced` (who, why, what changed) marks a gate an operator weakened on purpose."""
    from semflow import registry

    s = settings or get_settings()
    p = params.register_
    metrics_path = paths.metrics / "evaluate.json"
    if not metrics_path.is_file():
        raise SemflowError(f"{metrics_path} does not exist; run the evaluate stage first")
    metrics = json.loads(metrics_path.read_text())
    flat = flat_metrics(metrics)
    bundle_dir = build_bundle(paths, s)
    examples = read_split(paths, "test")["text"].head(3).tolist()

    def _do(run: Any) -> dict[str, Any]:
        log_metrics(metrics)
        version = registry.log_bundle(
            bundle_dir,
            tracking_uri=s.tracking_uri,
            name=s.registered_model,
            metrics=flat,
            example_texts=examples,
        )
        from semflow.training.lineage import lineage_tags, log_lineage_files

        log_lineage_files(paths)
        from semflow.training.figures import log_evaluation

        log_evaluation(paths)  # confusion matrix, per-class F1, metrics table: evaluation/
        tags = lineage_tags(
            paths,
            run_id=run.info.run_id,
            embedder_version=json.loads((bundle_dir / "bundle.json").read_text())[
                "embedder_version"
            ],
            dvc_remote=s.dvc_remote,
        )
        registry.set_version_tags(s.tracking_uri, s.registered_model, version, tags)
        gate = registry.promote(
            s.tracking_uri,
            version,
            floors=p.floors,
            tolerance=p.tolerance,
            compare=p.compare,
            name=s.registered_model,
            run_id=run.info.run_id,
            forced=forced,
        )
        return gate.to_dict()

    result = Tracker(paths, params, s, "register").run(_do)
    write_json(paths.metrics / "register.json", {k: v for k, v in result.items() if k != "version"})
    return result
