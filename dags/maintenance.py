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

from semflow.config import dag_default_args


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=dag_default_args(),
    tags=["semflow", "maintenance"],
    doc_md=__doc__,
    params={
        "dry_run": Param(False, type="boolean", description="Report only, remove nothing"),
        "keep_generations": Param(3, type="integer", minimum=1),
        "prediction_retention_days": Param(30, type="integer", minimum=1),
        "failed_row_days": Param(7, type="integer", minimum=1),
        "mlflow_run_days": Param(90, type="integer", minimum=1),
    },
)
def maintenance():
    def _cut(params, end):
        from semflow.maintenance import cutoffs

        return cutoffs(
            end,
            params["prediction_retention_days"],
            params["failed_row_days"],
            params["mlflow_run_days"],
        )

    @task
    def retry_dead_letters(params=None) -> dict:
        from semflow_airflow import source_from_name

        from semflow.logging import configure_logging
        from semflow.maintenance import retry_dead_letters as retry

        configure_logging()
        return retry(source_from_name, dry_run=params["dry_run"]).to_dict()

    @task
    def upgrade_index_layout(params=None) -> dict:
        from semflow.app import Services
        from semflow.logging import configure_logging
        from semflow.maintenance import upgrade_index_layout as upgrade

        configure_logging()
        store = Services.from_settings().store
        return upgrade(store, dry_run=params["dry_run"]).to_dict()

    @task
    def prune_generations(params=None) -> dict:
        from semflow.app import Services
        from semflow.logging import configure_logging
        from semflow.maintenance import prune_generations as prune

        configure_logging()
        store = Services.from_settings().store
        return prune(store, params["keep_generations"], dry_run=params["dry_run"]).to_dict()

    @task
    def purge_predictions(params=None, data_interval_end=None) -> dict:
        from semflow.config import get_settings
        from semflow.logging import configure_logging
        from semflow.maintenance import purge_predictions as purge

        configure_logging()
        before = _cut(params, data_interval_end)["predictions_before"]
        return purge(get_settings().home, before, dry_run=params["dry_run"]).to_dict()

    @task
    def prune_failed_rows(params=None, data_interval_end=None) -> dict:
        from semflow.app import Services
        from semflow.logging import configure_logging
        from semflow.maintenance import prune_failed_rows as prune

        configure_logging()
        cat = Services.from_settings().catalog
        before = _cut(params, data_interval_end)["failed_before"]
        return prune(cat, before, dry_run=params["dry_run"]).to_dict()

    @task
    def purge_mlflow_runs(params=None, data_interval_end=None) -> dict:
        from semflow.config import get_settings
        from semflow.logging import configure_logging
        from semflow.maintenance import purge_mlflow_runs as purge

        configure_logging()
        before = _cut(params, data_interval_end)["runs_before"]
        return purge(get_settings().tracking_uri, before, dry_run=params["dry_run"]).to_dict()

    # Retry first: a document retried today is not pruned as an old failure, and the
    # generations the retry and the upgrade publish count when old generations are dropped.
    upgrade = upgrade_index_layout()
    retry_dead_letters() >> [prune_failed_rows(), upgrade]
    upgrade >> prune_generations()
    purge_predictions()
    purge_mlflow_runs()


maintenance()
