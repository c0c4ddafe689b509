"""
### Sync documents into the vector index

For the run's data interval, the source yields changed documents (watermark on
`updated_at`, tombstones for soft deletes, `reconcile` for hard deletes). Unchanged content
is skipped; changed text is embedded in mapped tasks (one per partition, so workers share
the load) and a single writer upserts ids `uuid5(source, doc_id)`, applies deletes and
publishes a new index generation. The catalog records everything; dead letters are retried
next run. `announce` emits the Asset `semflow://documents`, with the counts in the event's
extra, only when the index changed (documents indexed or deleted); a run that changed
nothing skips it, so nothing downstream validates or retrains.

Backfill: `airflow backfill create --dag-id sync_documents --from-date ... --to-date ...`.
Same function as `semflow sync`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from semflow.config import dag_default_args

DOCUMENTS = Asset("semflow://documents")


@dag(
    # Data-interval timetable: each run owns [start, end), so backfills cover exact windows.
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=dag_default_args(),
    tags=["semflow", "sync"],
    doc_md=__doc__,
    params={
        "source": Param("banking77", type="string", description="Name in sources.yaml"),
        "full_refresh": Param(False, type="boolean", description="Rebuild a fresh generation"),
        "reconcile": Param(False, type="boolean", description="Remove rows deleted at source"),
    },
)
def sync_documents():
    @task
    def plan(params=None, data_interval_start=None, data_interval_end=None) -> dict:
        from semflow_airflow import source_from_name, window_of

        from semflow.app import Services
        from semflow.sync import plan_sync

        svc = Services.from_settings()
        p = plan_sync(
            source_from_name(params["source"]),
            catalog=svc.catalog,
            store=svc.store,
            embedder_version=svc.embedder().version,
            window=window_of(params, data_interval_start, data_interval_end),
            full_refresh=params["full_refresh"],
            reconcile=params["reconcile"],
            settings=svc.settings,
        )
        return p.to_dict()

    @task
    def partitions(plan: dict) -> list[str]:
        return plan["partitions"]

    @task(max_active_tis_per_dagrun=4)
    def embed(plan: dict, part: str) -> str:
        from semflow.app import Services
        from semflow.sync import SyncPlan, embed_partition

        p = SyncPlan.from_dict(plan)
        return embed_partition(p, part, Services.from_settings().embedder(p.embedder_version))

    @task(trigger_rule="none_failed")
    def apply(plan: dict) -> dict:
        from semflow.app import Services
        from semflow.sync import SyncPlan, apply_sync

        svc = Services.from_settings()
        p = SyncPlan.from_dict(plan)
        result = apply_sync(
            p,
            catalog=svc.catalog,
            store=svc.store,
            dimension=svc.embedder(p.embedder_version).dimension,
        )
        return result.to_dict()

    @task(outlets=[DOCUMENTS])
    def announce(result: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from semflow.training.policy import sync_changes

        changes = sync_changes(result["counts"])
        if not changes:
            # A skipped task emits no Asset event: validate_data is not triggered.
            raise AirflowSkipException("the index did not change: nothing to announce")
        extra = {"source": result["source"], "generation": result["generation"], **changes}
        outlet_events[DOCUMENTS].extra = extra
        return extra

    planned = plan()
    vectors = embed.partial(plan=planned).expand(part=partitions(planned))
    applied = apply(planned)
    vectors >> applied
    announce(applied)


sync_documents()
