"""
### Collect prediction candidates (daily)

Reads the service's prediction log for the run's day (the data interval start, UTC) and
writes `datasets/candidates/YYYY-MM-DD/candidates.parquet` plus `manifest.json` (counts per
label, low-confidence flags) to object storage: `<home>/datasets` by default, S3/MinIO when
`SEMFLOW_STORAGE_URL=s3://bucket/prefix`. Re-running a day rewrites the same keys.

Backfill: `airflow backfill create --dag-id collect_predictions --from-date ... --to-date ...`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from semflow.config import dag_default_args

CANDIDATES = Asset("semflow://datasets/candidates")


@dag(
    # A data interval that spans the period (Airflow 3 cron schedules default to a point).
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    default_args=dag_default_args(),
    tags=["semflow", "datasets"],
    doc_md=__doc__,
    params={
        "low_confidence": Param(
            0.5, type="number", minimum=0, maximum=1, description="Flag scores below this"
        ),
    },
)
def collect_predictions():
    @task(outlets=[CANDIDATES])
    def collect(params=None, data_interval_start=None) -> dict:
        from semflow.datasets import collect_candidates
        from semflow.logging import configure_logging

        configure_logging()
        return collect_candidates(
            data_interval_start.date(), low_confidence=float(params["low_confidence"])
        )

    collect()


collect_predictions()
