"""
### Train the models

Runs on `semflow://validated-snapshot` (or by hand). The DVC pipeline's stages as tasks:
prepare -> fine-tune embedder -> embed -> classifier -> ranker -> evaluate, writing under
`$SEMFLOW_HOME/pipeline` and logging one MLflow run tree. Params choose the models: the
fine-tune and the ranker are optional, and a failed ranker does not stop evaluation
(continue-on-error: the bundle falls back to cosine-only ranking). Emits
`semflow://candidate-model` for `register_model`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, Param, dag, task

from semflow.config import dag_default_args

VALIDATED = Asset("semflow://validated-snapshot")
CANDIDATE = Asset("semflow://candidate-model")


def _overrides(params: dict) -> dict:
    return {**params["overrides"], "finetune.enabled": params["finetune"]}


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
        "train_ranker": Param(True, type="boolean", description="Learn ranker weights"),
        "overrides": Param({}, type="object", description="params.yaml overrides, dotted keys"),
    },
)
def train_models():
    @task
    def prepare(params=None) -> dict:
        from semflow.training import dag_stage

        return dag_stage("prepare", _overrides(params))

    @task
    def finetune(_: dict, params=None) -> dict:
        from semflow.training import dag_stage

        return dag_stage("finetune", _overrides(params))

    @task
    def embed(_: dict, params=None) -> dict:
        from semflow.training import dag_stage

        return dag_stage("embed", _overrides(params))

    @task
    def classifier(_: dict, params=None) -> dict:
        from semflow.training import dag_stage

        return dag_stage("classifier", _overrides(params))

    @task
    def ranker(_: dict, params=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from semflow.training import dag_stage

        if not params["train_ranker"]:
            raise AirflowSkipException("train_ranker is off: cosine-only ranking")
        return dag_stage("ranker", _overrides(params))

    @task(outlets=[CANDIDATE], trigger_rule="all_done")
    def evaluate(clf: dict, params=None) -> dict:
        from semflow.training import dag_stage

        return dag_stage("evaluate", _overrides(params))

    emb = embed(finetune(prepare()))
    clf = classifier(emb)
    ranker(emb) >> evaluate(clf)


train_models()
