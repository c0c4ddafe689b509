"""Housekeeping steps for `dags/maintenance.py` (and the CLI): each returns what it removed.

Every step takes `dry_run`: it then reports the same list without removing anything. Cut-offs
are computed from a reference time the caller passes (the DAG run's data interval end), never
from the clock, so a re-run of the same day removes the same things.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semflow.app import Services
from semflow.catalog import Catalog
from semflow.config import (
    FAILED_ROW_DAYS,
    KEEP_GENERATIONS,
    MLFLOW_RUN_DAYS,
    PREDICTION_RETENTION_DAYS,
)
from semflow.documents import Document
from semflow.sources.base import Source

if TYPE_CHECKING:
    from semflow.index.rebuild import RebuildReport

log = logging.getLogger("semflow.maintenance")


@dataclass
class StepReport:
    step: str
    dry_run: bool
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "count": self.count}


def _done(report: StepReport) -> StepReport:
    verb = "would remove" if report.dry_run else "removed"
    log.info("%s: %s %d", report.step, verb, report.count, extra={"report": report.to_dict()})
    return report


# -- dead letters ------------------------------------------------------------------------
class _RetryOnly(Source):
    """A view of a source that extracts nothing, so a sync only re-fetches its dead letters."""

    def __init__(self, inner: Source) -> None:
        super().__init__(inner.name, inner.mapping)
        self.inner = inner

    def extract(self, start: datetime | None, end: datetime | None) -> Iterator[Document]:
        return iter(())

    def fetch(self, doc_ids: Iterable[str]) -> Iterator[Document]:
        return self.inner.fetch(doc_ids)

    def live_ids(self) -> Iterator[str]:
        return self.inner.live_ids()


def dead_letter_sources(catalog: Catalog, max_attempts: int) -> dict[str, int]:
    """Sources with retryable failed documents, and how many each has."""
    return catalog.dead_letter_counts(max_attempts)


def retry_dead_letters(
    resolve: Callable[[str], Source],
    services: Services | None = None,
    *,
    dry_run: bool = False,
) -> StepReport:
    """Re-sync only the failed documents of every source (no window, no full refresh).

    `resolve` turns a source name into a Source (the DAG uses Airflow Connections). Skipped,
    with the reason, when there is no live index or it was built with another model: a retry
    must never turn into a full rebuild from a handful of documents.
    """
    from semflow.embedding import check_embedder
    from semflow.errors import ModelMismatchError
    from semflow.sync import MAX_ATTEMPTS, run_sync

    svc = services or Services.from_settings()
    report = StepReport("retry_dead_letters", dry_run)
    pending = dead_letter_sources(svc.catalog, MAX_ATTEMPTS)
    report.details["pending"] = pending
    if not pending or dry_run:
        report.removed = sorted(pending)  # the sources that would be retried
        return _done(report)
    live_version = svc.store.live_embedder_version()
    if live_version is None:
        report.skipped = sorted(pending)
        report.details["reason"] = "no live index generation"
        return _done(report)
    embedder = svc.embedder(live_version)
    try:
        check_embedder(embedder.version, live_version, "the live index was built with")
    except ModelMismatchError as err:
        report.skipped = sorted(pending)
        report.details["reason"] = str(err)
        return _done(report)
    results = {}
    for name in sorted(pending):
        try:
            source = resolve(name)
        except Exception as err:  # a source removed from sources.yaml must not stop the rest
            report.skipped.append(name)
            results[name] = {"error": str(err)}
            continue
        res = run_sync(_RetryOnly(source), svc)
        results[name] = res.counts
        report.removed.append(name)
    report.details["results"] = results
    return _done(report)


# -- index generations --------------------------------------------------------------------
def prune_generations(store: Any, keep: int, *, dry_run: bool = False) -> StepReport:
    """Drop index generations beyond the newest `keep` (never the live one)."""
    if keep < 1:
        from semflow.errors import SettingsError

        raise SettingsError(f"keep must be at least 1, got {keep}")
    report = StepReport("prune_generations", dry_run, details={"keep": keep})
    if dry_run:
        live = store.live_generation()
        gens = sorted(store.generations())
        doomed = [g for g in gens[: max(0, len(gens) - keep)] if g != live]
    else:
        doomed = store.prune(keep)
    report.removed = [str(g) for g in doomed]
    return _done(report)


# What the catalog's run history names a rebuild's source: it is the whole index's, not one
# source's.
REBUILD_RUN_SOURCE = "*"


def rebuild_index(store: Any, catalog: Catalog) -> RebuildReport:
    """`rebuild_live`, recorded in the catalog's run history beside the syncs (mode `rebuild`,
    source `*`, the generation it published), so `semflow status` tells where the live
    generation came from; a failed one is recorded with its error."""
    from semflow.index.rebuild import rebuild_live

    run_id = catalog.start_run(REBUILD_RUN_SOURCE, (None, None), "rebuild")
    try:
        report = rebuild_live(store)
    except BaseException as err:
        catalog.fail_run(run_id, err)
        raise
    counts = {"points": report.points, "replaced": report.replaced}
    catalog.finish_run(run_id, "succeeded", counts, report.generation)
    return report


def upgrade_index_layout(store: Any, catalog: Catalog, *, dry_run: bool = False) -> StepReport:
    """Rebuild the live generation from its own points (`rebuild_index`) when its layout is
    older than this release's (`VectorIndex.outdated_layout`); the layout it replaces is what
    the report lists as removed."""
    report = StepReport("upgrade_index_layout", dry_run)
    if store.live_generation() is None:
        report.details["reason"] = "no live index generation"
        return _done(report)
    with store.open_live() as idx:
        generation, reasons = idx.generation, idx.outdated_layout()
    report.details["outdated"] = reasons
    if reasons:
        report.removed = [f"generation {generation}'s layout"]
        if not dry_run:
            report.details["rebuild"] = asdict(rebuild_index(store, catalog))
    return _done(report)


# -- prediction logs ------------------------------------------------------------------------
def purge_predictions(home: Path, before: date, *, dry_run: bool = False) -> StepReport:
    """Delete prediction-log days strictly before `before`."""
    from semflow.predictions import log_dir

    report = StepReport("purge_predictions", dry_run, details={"before": before.isoformat()})
    folder = log_dir(home)
    for path in sorted(folder.glob("*.jsonl")) if folder.exists() else []:
        try:
            day = date.fromisoformat(path.stem)
        except ValueError:
            continue  # not ours
        if day < before:
            report.removed.append(path.name)
            if not dry_run:
                path.unlink(missing_ok=True)
    return _done(report)


# -- catalog ---------------------------------------------------------------------------------
def prune_failed_rows(
    catalog: Catalog, older_than: datetime, *, dry_run: bool = False
) -> StepReport:
    """Delete failed catalog rows not changed since `older_than`."""
    keys = catalog.failed_keys(older_than)
    report = StepReport("prune_failed_rows", dry_run, removed=keys)
    report.details["older_than"] = older_than.isoformat()
    if not dry_run and keys:
        catalog.prune_failed(older_than)
    return _done(report)


# -- MLflow ----------------------------------------------------------------------------------
def purge_mlflow_runs(
    tracking_uri: str, older_than: datetime, *, dry_run: bool = False
) -> StepReport:
    """Delete MLflow runs started before `older_than` that no registered model version uses.

    Parents of a used run are kept too. Deletion is MLflow's own (runs move to the deleted
    lifecycle stage); `mlflow gc` reclaims their artifacts.
    """
    from mlflow.entities import ViewType

    from semflow.registry import client as registry_client

    # Both URIs explicit: a client given only the tracking URI takes the registry from
    # MLflow's process-wide default, which an earlier `mlflow.set_registry_uri` may have
    # pointed at another (or a stopped) server.
    client = registry_client(tracking_uri)
    report = StepReport(
        "purge_mlflow_runs", dry_run, details={"older_than": older_than.isoformat()}
    )
    used = {mv.run_id for mv in _all_model_versions(client) if mv.run_id}
    cutoff_ms = int(older_than.timestamp() * 1000)
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    old = []
    for i in range(0, len(exp_ids), 100):
        token = None
        while True:
            page = client.search_runs(
                exp_ids[i : i + 100],
                filter_string=f"attributes.start_time < {cutoff_ms}",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
            old += list(page)
            token = page.token
            if not token:
                break
    keep = set(used)
    for run_id in used:  # keep the chain of parents of a registered run
        try:
            parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        except Exception:  # the run may be gone already; nothing to protect then
            continue
        while parent and parent not in keep:
            keep.add(parent)
            try:
                parent = client.get_run(parent).data.tags.get("mlflow.parentRunId")
            except Exception:
                parent = None
    for run in sorted(old, key=lambda r: r.info.run_id):
        if run.info.run_id in keep:
            report.skipped.append(run.info.run_id)
            continue
        report.removed.append(run.info.run_id)
        if not dry_run:
            client.delete_run(run.info.run_id)
    return _done(report)


def _all_model_versions(client: Any) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


# -- all of it -------------------------------------------------------------------------------
def cutoffs(
    reference: datetime,
    prediction_retention_days: int = PREDICTION_RETENTION_DAYS,
    failed_row_days: int = FAILED_ROW_DAYS,
    mlflow_run_days: int = MLFLOW_RUN_DAYS,
) -> dict[str, Any]:
    """Cut-offs for each step from the run's reference time (data interval end)."""
    for name, v in (
        ("prediction_retention_days", prediction_retention_days),
        ("failed_row_days", failed_row_days),
        ("mlflow_run_days", mlflow_run_days),
    ):
        if v < 1:
            from semflow.errors import SettingsError

            raise SettingsError(f"{name} must be at least 1, got {v}")
    return {
        "predictions_before": (reference - timedelta(days=prediction_retention_days)).date(),
        "failed_before": reference - timedelta(days=failed_row_days),
        "runs_before": reference - timedelta(days=mlflow_run_days),
    }


# The steps in the DAG's order.
STEPS = (
    "retry_dead_letters",
    "prune_failed_rows",
    "upgrade_index_layout",
    "prune_generations",
    "purge_predictions",
    "purge_mlflow_runs",
)


def run_step(
    step: str,
    reference: datetime,
    resolve: Callable[[str], Source] | None = None,
    *,
    services: Services | None = None,
    dry_run: bool = False,
    keep_generations: int = KEEP_GENERATIONS,
    prediction_retention_days: int = PREDICTION_RETENTION_DAYS,
    failed_row_days: int = FAILED_ROW_DAYS,
    mlflow_run_days: int = MLFLOW_RUN_DAYS,
) -> StepReport:
    """One of `STEPS`, with the cut-offs counted from `reference` (the DAG run's data
    interval end): what each task of the DAG runs. `resolve` (a source name to a Source) is
    needed by `retry_dead_letters` only."""
    svc = services or Services.from_settings()
    s = svc.settings
    cut = cutoffs(reference, prediction_retention_days, failed_row_days, mlflow_run_days)
    if step == "retry_dead_letters":
        if resolve is None:
            raise ValueError("retry_dead_letters needs `resolve`")
        return retry_dead_letters(resolve, svc, dry_run=dry_run)
    steps: dict[str, Callable[[], StepReport]] = {
        "prune_failed_rows": lambda: prune_failed_rows(
            svc.catalog, cut["failed_before"], dry_run=dry_run
        ),
        "upgrade_index_layout": lambda: upgrade_index_layout(
            svc.store, svc.catalog, dry_run=dry_run
        ),
        "prune_generations": lambda: prune_generations(
            svc.store, keep_generations, dry_run=dry_run
        ),
        "purge_predictions": lambda: purge_predictions(
            s.home, cut["predictions_before"], dry_run=dry_run
        ),
        "purge_mlflow_runs": lambda: purge_mlflow_runs(
            s.tracking_uri, cut["runs_before"], dry_run=dry_run
        ),
    }
    return steps[step]()


def run_maintenance(
    reference: datetime,
    resolve: Callable[[str], Source],
    *,
    services: Services | None = None,
    **options: Any,
) -> list[StepReport]:
    """Every step in the DAG's order, in one process (what a CLI command would run);
    `options` are `run_step`'s."""
    svc = services or Services.from_settings()
    return [run_step(step, reference, resolve, services=svc, **options) for step in STEPS]
