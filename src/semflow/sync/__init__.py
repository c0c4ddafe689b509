"""Sync: extract the delta -> embed -> upsert -> deletes -> record.

Three steps, so a DAG can fan the embedding out over workers (`.expand()`):
  plan_sync()        extract the window, skip unchanged docs, write partitions to staging (`plan`)
  embed_partition()  embed one partition (resumable: content-addressed in staging) (`embed`;
                     `embed_partitions` embeds several in one length-sorted call)
  apply_sync()       one writer: upsert, delete, reconcile, publish a generation, then record
                     (`apply`; dead letters, orphans and full-refresh carry-over: `reconcile`)
`run_sync()` runs all three in one process (`run`); the CLI and the DAG call the same functions.

apply_sync() holds the index writer lock from its first write to its catalog commit, so no
other writer (a sync of another window, a backfill, a re-index) comes between the publish and
the catalog write. Under that lock newer wins: a version older than the one the catalog or the
index already holds (by the source's `updated_at`) is skipped, upserts, tombstones and dead
letters alike. The catalog is written only after the generation is published, so it never
marks a document indexed that is not in the index; a crash in between means the next run
re-upserts the same deterministic ids (no duplicates). If a re-index switched the live
generation's embedder after an incremental plan was embedded, its documents become dead
letters (embedded again by the next run) and the rest of the plan still applies.
"""

from __future__ import annotations

from semflow.sync.apply import SyncResult, apply_sync
from semflow.sync.embed import embed_partition, embed_partitions
from semflow.sync.plan import MAX_ATTEMPTS, SyncPlan, Window, check_text, plan_sync
from semflow.sync.run import run_sync

__all__ = [
    "MAX_ATTEMPTS",
    "SyncPlan",
    "SyncResult",
    "Window",
    "apply_sync",
    "check_text",
    "embed_partition",
    "embed_partitions",
    "plan_sync",
    "run_sync",
]
