"""Stage `validate`: GX suites and drift checks; a critical failure stops the pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from semflow.config import Settings, get_settings
from semflow.training.common import (
    Paths,
    Tracker,
    log,
    log_metrics,
    read_docs,
    sample_frame,
    write_json,
)
from semflow.training.params import PipelineParams


def _reference(paths: Paths, params: PipelineParams) -> pd.DataFrame | None:
    ref_path = paths.resolve(params.validate_.reference)
    if ref_path is None:
        return None
    ref = pd.read_csv(ref_path, dtype=str, keep_default_na=False)
    ref = ref.rename(columns={"category": "label"})
    ref["doc_id"] = [f"ref-{i}" for i in range(len(ref))]
    return sample_frame(ref, params.base, params.base.subset)


def _encoder(settings: Settings) -> Callable[[list[str]], np.ndarray]:
    from semflow.embedding import resolve_embedder

    emb = resolve_embedder(settings)
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
    df = read_docs(paths.snapshot)
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
    write_json(paths.metrics / "validate.json", out)
    try:
        Tracker(paths, params, s, "validate").run(lambda run: _log_validation(paths, out))
    except Exception as err:  # tracking is best effort; the data verdict is what matters
        log.warning("could not log validation to MLflow: %s", err)
    if failure is not None:
        raise failure
    return out


def _log_validation(paths: Paths, out: dict[str, Any]) -> None:
    import mlflow

    log_metrics({k: v for k, v in out.items() if k != "success"})
    mlflow.set_tag("validation.success", str(out["success"]))
    if paths.reports.is_dir():
        mlflow.log_artifacts(str(paths.reports), artifact_path="validation")
