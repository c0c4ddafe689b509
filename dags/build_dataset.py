"""
### Build the monthly training dataset

Merges the gold data (params.yaml's `validate.reference`, `data/banking77/train.csv`) with
every verified candidate (`datasets/verified/YYYY-MM-DD/*.parquet`) up to the end of the run's
month into `datasets/full/YYYY-MM/train.parquet` with a `manifest.json` (counts, hashes, source
files). Gold wins over a verified row with the same text; the latest review of a text wins.
Re-running a month rewrites the same keys. `semflow.datasets.export_dataset` copies it to a
folder tracked by DVC for `dvc repro`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, CronDataIntervalTimetable, dag, task

from semflow.config import dag_default_args

FULL = Asset("semflow://datasets/full")


@dag(
    # A data interval that spans the period (Airflow 3 cron schedules default to a point).
    schedule=CronDataIntervalTimetable("@monthly", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=dag_default_args(),
    tags=["semflow", "datasets"],
    doc_md=__doc__,
)
def build_dataset():
    @task(outlets=[FULL])
    def build(data_interval_start=None) -> dict:
        from semflow.datasets import build_dataset as build_full
        from semflow.logging import configure_logging

        configure_logging()
        return build_full(data_interval_start.date())

    build()


build_dataset()
