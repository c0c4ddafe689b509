"""
### Maintenance (daily)

Each step reports what it removed (or, with `dry_run`, what it would remove):
retry dead-letter documents through the normal sync, rebuild the live index generation from
its own points when its layout is older than this release's (`semflow index rebuild`: no
model, no source), drop index generations beyond the newest `keep_generations`, purge
prediction logs older than `prediction_retention_days`, prune failed catalog rows unchanged
for `failed_row_days`, and delete MLflow runs older than `mlflow_run_days` that no registered
model version uses. Cut-offs are counted from the
run's data interval end, so re-running a day removes the same things.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from semflow.config import (
    FAILED_ROW_DAYS,
    KEEP_GENERATIONS,
    MLFLOW_RUN_DAYS,
    PREDICTION_RETENTION_DAYS,
    dag_default_args,
)

PARAMS = {
    "dry_run": Param(False, type="boolean", description="Report only, remove nothing"),
    "keep_generations": Param(KEEP_GENERATIONS, type="integer", minimum=1),
    "prediction_retention_days": Param(PREDICTION_RETENTION_DAYS, type="integer", minimum=1),
    "failed_row_days": Param(FAILED_ROW_DAYS, type="integer", minimum=1),
    "mlflow_run_days": Param(MLFLOW_RUN_DAYS, type="integer", minimum=1),
}


def _step(name: str, params, data_interval_end, resolve=None) -> dict:
    """Run one step of `semflow.maintenance` with this run's params; its report."""
    from semflow.logging import configure_logging
    from semflow.maintenance import run_step

    configure_logging()
    options = {k: params[k] for k in PARAMS}
    return run_step(name, data_interval_end, resolve, **options).to_dict()


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=dag_default_args(),
    tags=["semflow", "maintenance"],
    doc_md=__doc__,
    params=PARAMS,
)
def maintenance():
    @task
    def retry_dead_letters(params=None, data_interval_end=None) -> dict:
        from semflow_airflow import source_from_name

        return _step("retry_dead_letters", params, data_interval_end, source_from_name)

    @task
    def upgrade_index_layout(params=None, data_interval_end=None) -> dict:
        return _step("upgrade_index_layout", params, data_interval_end)

    @task
    def prune_generations(params=None, data_interval_end=None) -> dict:
        return _step("prune_generations", params, data_interval_end)

    @task
    def purge_predictions(params=None, data_interval_end=None) -> dict:
        return _step("purge_predictions", params, data_interval_end)

    @task
    def prune_failed_rows(params=None, data_interval_end=None) -> dict:
        return _step("prune_failed_rows", params, data_interval_end)

    @task
    def purge_mlflow_runs(params=None, data_interval_end=None) -> dict:
        return _step("purge_mlflow_runs", params, data_interval_end)

    # Retry first: a document retried today is not pruned as an old failure, and the
    # generations the retry and the upgrade publish count when old generations are dropped.
    upgrade = upgrade_index_layout()
    retry_dead_letters() >> [prune_failed_rows(), upgrade]
    upgrade >> prune_generations()
    purge_predictions()
    purge_mlflow_runs()


maintenance()
