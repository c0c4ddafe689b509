"""The training pipeline: one function per stage, shared by `dvc repro`, the DAGs and tests.

snapshot -> validate -> prepare -> finetune -> embed -> classifier -> ranker -> evaluate
-> register. Every stage reads and writes files under a `Paths` root (the checkout for
`dvc repro`, the DVC workspace `$SEMFLOW_HOME/pipeline` for Airflow (`workspace`), a tmp dir in
tests) and logs to one MLflow run tree.

`params` is the schema of params.yaml, `common` holds what the stages share and
`stages/<name>.py` holds stage `<name>`, so `dvc.yaml` can list exactly the code each
stage's outputs depend on.
"""

from __future__ import annotations

from semflow.training.common import (
    STAGES,
    Paths,
    flat_metrics,
    run_pipeline,
    run_stage,
    stage_function,
    stage_main,
)
from semflow.training.params import PipelineParams, load_pipeline_params, parse_params
from semflow.training.reindex import ReindexRejected, dag_reindex, golden_ndcg, reindex_if_changed

__all__ = [
    "STAGES",
    "Paths",
    "PipelineParams",
    "ReindexRejected",
    "dag_reindex",
    "flat_metrics",
    "golden_ndcg",
    "load_pipeline_params",
    "parse_params",
    "reindex_if_changed",
    "run_pipeline",
    "run_stage",
    "stage_function",
    "stage_main",
]
