"""Stage `register`: bundle, MLflow model version and promotion gate (with the int8 guard)."""

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


def build_bundle(
    paths: Paths, settings: Settings | None = None, backend_guard: dict[str, Any] | None = None
) -> Path:
    """The bundle directory: a fine-tuned embedder ships with its ONNX exports (fp32, int8,
    built under `$SEMFLOW_HOME/onnx` unless evaluate already did) and the int8 verdict."""
    from semflow.models.bundle import Bundle

    s = settings or get_settings()
    emb = embedder_for(paths, s)
    clf, info, weights = load_bundle_parts(paths)
    meta = json.loads((paths.embedder / "embedder.json").read_text())
    evaluated = json.loads((paths.metrics / "evaluate.json").read_text())
    bundle = Bundle(
        embedder_dir=paths.embedder / "model" if meta.get("finetuned") else None,
        embedder_version=emb.version,
        labels=[str(c) for c in clf.classes_],
        threshold=float(info["threshold"]),
        ranker_weights=weights,
        classifier=clf,
        registered_model=s.registered_model,
        tags={"embedder_finetuned": str(bool(meta.get("finetuned")))},
        backend_guard=dict(backend_guard or {}),
        operating_point=operating_point(info, evaluated),
    )
    if paths.bundle.exists():
        shutil.rmtree(paths.bundle)
    return bundle.save(paths.bundle, onnx_home=s.home)


def operating_point(info: dict[str, Any], metrics: dict[str, Any]) -> dict[str, float]:
    """What `/labels` reports of the unknown threshold: in-scope coverage on validation and
    test, and the open-set evaluation's OOS recall, in-scope accuracy and AUROC there."""
    cls, ops = metrics.get("classifier", {}), metrics.get("open_set", {})
    out = {
        "threshold": info["threshold"],
        "val_coverage": info.get("val_coverage"),
        "test_coverage": cls.get("coverage"),
        "open_set_in_scope_accuracy": ops.get("in_scope_accuracy"),
        "open_set_oos_recall": ops.get("oos_recall"),
        "open_set_auroc": ops.get("auroc"),
    }
    return {k: float(v) for k, v in out.items() if v is not None}


def register(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    forced: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Bundle -> MLflow model version -> promotion gate; writes `metrics/register.json`.
    `forced` (who, why, what changed) marks a gate an operator weakened on purpose."""
    from semflow import registry
    from semflow.models.backend_guard import int8_verdict

    s = settings or get_settings()
    p = params.register_
    metrics_path = paths.metrics / "evaluate.json"
    if not metrics_path.is_file():
        raise SemflowError(f"{metrics_path} does not exist; run the evaluate stage first")
    metrics = json.loads(metrics_path.read_text())
    flat = flat_metrics(metrics)
    # The gate's verdict on the int8 export travels in the bundle: the service reads it there.
    int8 = int8_verdict(flat, p.int8_tolerance)
    bundle_dir = build_bundle(paths, s, int8)
    examples = read_split(paths, "test")["text"].head(3).tolist()

    def _do(run: Any) -> dict[str, Any]:
        log_metrics(metrics)
        tradeoff = paths.plots / "oos_tradeoff.png"  # evaluate's curve, as an MLflow image
        if tradeoff.is_file():
            import mlflow

            mlflow.log_artifact(str(tradeoff), "plots")
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
        tags["gate.int8"] = "accepted" if int8["passed"] else "refused"
        tags["gate.int8_reason"] = ("; ".join(int8["reasons"]) or "within tolerance")[:4000]
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
        return {**gate.to_dict(), "int8": int8}

    result = Tracker(paths, params, s, "register").run(_do)
    write_json(paths.metrics / "register.json", {k: v for k, v in result.items() if k != "version"})
    return result
