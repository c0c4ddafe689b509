"""
### Train the models

Runs on `semflow://validated-snapshot` (or by hand). The DVC pipeline's stages, one task each,
run by DVC itself in the workspace `$SEMFLOW_HOME/pipeline`: prepare -> fine-tune embedder ->
embed -> classifier -> ranker -> evaluate. A stage whose data, params and code did not change
since it last ran is not run again (`"ran": false` in its result), so the same snapshot twice
trains nothing the second time. `finetune` and `train_ranker` turn those models off
(params `finetune.enabled`, `ranker.enabled`: cosine-only ranking). Each task's log has its
stage's output. Emits `semflow://candidate-model` for `register_model`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, Param, dag, task

from semflow.config import dag_default_args

VALIDATED = Asset("semflow://validated-snapshot")
CANDIDATE = Asset("semflow://candidate-model")


def _overrides(params: dict) -> dict:
    return {
        **params["overrides"],
        "finetune.enabled": params["finetune"],
        "ranker.enabled": params["train_ranker"],
    }


def _stage(name: str, **task_kwargs):
    """A task that runs DVC stage `name` in the workspace (upstream results only order it)."""

    @task(task_id=name, **task_kwargs)
    def run(*upstream: dict, params=None) -> dict:
        from semflow.training.workspace import dag_stage

        return dag_stage(name, _overrides(params))

    return run


@dag(
    schedule=[VALIDATED],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=dag_default_args(),
    tags=["semflow", "training"],
    doc_md=__doc__,
    params={
        "finetune": Param(True, type="boolean", description="Fine-tune the embedder"),
        "train_ranker": Param(
            True, type="boolean", description="Learn ranker weights (off: cosine-only)"
        ),
        "overrides": Param({}, type="object", description="params.yaml overrides, dotted keys"),
    },
)
def train_models():
    prepared = _stage("prepare")()
    emb = _stage("embed")(_stage("finetune")(prepared))
    clf = _stage("classifier")(emb)
    _stage("ranker")(emb) >> _stage("evaluate", outlets=[CANDIDATE])(clf)


train_models()
