"""All three steps in one process: what `semflow sync` runs."""

from __future__ import annotations

import json
import logging
import time

from semflow.app import Services
from semflow.progress import progress
from semflow.sources.base import Source
from semflow.sync.apply import SyncResult, apply_sync
from semflow.sync.embed import embed_partitions
from semflow.sync.plan import Window, plan_sync

log = logging.getLogger("semflow.sync")


def run_sync(
    source: Source,
    services: Services | None = None,
    *,
    window: Window = (None, None),
    full_refresh: bool = False,
    reconcile: bool = False,
) -> SyncResult:
    """Plan, embed every partition, apply, with the embedder of the live generation. What
    `semflow sync` runs."""
    svc = services or Services.from_settings()
    catalog, store = svc.catalog, svc.store
    embedder = svc.embedder()
    t0 = time.perf_counter()
    plan = plan_sync(
        source,
        catalog=catalog,
        store=store,
        embedder_version=embedder.version,
        window=window,
        full_refresh=full_refresh,
        reconcile=reconcile,
        settings=svc.settings,
    )
    with progress(f"sync {source.name}: embedding", len(plan.partitions), "partitions") as bar:
        vectors = embed_partitions(
            plan, plan.partitions, embedder, svc.settings.sync_embed_group, on_done=bar.update
        )
    result = apply_sync(
        plan, catalog=catalog, store=store, dimension=embedder.dimension, vectors=vectors
    )
    result.seconds = time.perf_counter() - t0
    log.info("sync of %s done: %s", source.name, json.dumps(result.counts))
    return result
