"""
### Validate the synced documents

Runs when the sync publishes the Asset `semflow://documents`. Exports the labelled documents
of the live index to a snapshot (`$SEMFLOW_HOME/pipeline/data/snapshot`), then runs the
great-expectations suites (schema, nulls, lengths, label set, duplicates, examples per label,
non-empty extract) and drift checks against the reference snapshot. A critical failure fails
the task, so nothing downstream trains; the HTML data docs are logged to MLflow.
`decide` applies the retraining policy (params.yaml `retrain`: enough changed labelled
documents, new drift, or an old model) and logs its decision and reason here and to MLflow;
only a "retrain" lets `announce` emit `semflow://validated-snapshot` (else it is skipped).
Same functions as `dvc repro validate`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, Param, dag, task

from semflow.config import dag_default_args

DOCUMENTS = Asset("semflow://documents")
VALIDATED = Asset("semflow://validated-snapshot")


@dag(
    schedule=[DOCUMENTS],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=dag_default_args(),
    tags=["semflow", "training", "validation"],
    doc_md=__doc__,
    params={
        "overrides": Param(
            {}, type="object", description="params.yaml overrides, dotted keys (base.subset: 600)"
        ),
    },
)
def validate_data():
    @task
    def snapshot(params=None) -> dict:
        from semflow.training.workspace import dag_stage

        return dag_stage("snapshot", params["overrides"])

    @task
    def validate(snap: dict, params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from semflow.errors import Verdict
        from semflow.training.workspace import dag_stage

        try:
            return dag_stage("validate", params["overrides"])
        except Verdict as err:
            # A data verdict does not change on retry: fail now; MLflow outages still retry.
            raise AirflowFailException(str(err)) from err

    @task
    def decide(_: dict, params=None, dag_run=None) -> dict:
        from semflow.training.policy import dag_decide

        tags = {"airflow.dag_id": dag_run.dag_id, "airflow.run_id": dag_run.run_id}
        return dag_decide(params["overrides"], tags)

    @task(outlets=[VALIDATED])
    def announce(decision: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["retrain"]:
            # A skipped task emits no Asset event: train_models is not triggered.
            raise AirflowSkipException(decision["reason"])
        outlet_events[VALIDATED].extra = decision
        return decision

    announce(decide(validate(snapshot())))


validate_data()
