"""Step 3, apply: the single writer. Upsert the embedded partitions, delete tombstones and
orphans, publish a generation, then record it all in the catalog.

Everything happens under the index writer lock, and newer wins (see `semflow.sync`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semflow.catalog import DELETED, INDEXED, Catalog
from semflow.documents import Document, point_id, to_utc
from semflow.errors import IndexError_, SemflowError
from semflow.index import IndexStore, VectorIndex
from semflow.sync.embed import vectors_path
from semflow.sync.plan import SyncPlan, read_lines
from semflow.sync.reconcile import carry_over, failed_rows, gone_ids, orphan_ids, outdated_rows
from semflow.sync.rows import (
    deleted_row,
    held_point_ids,
    is_older,
    known_versions,
    record,
    row,
    surplus_point_ids,
)

log = logging.getLogger("semflow.sync")


@dataclass
class SyncResult:
    source: str
    run_id: int
    generation: int | None
    mode: str
    counts: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_sync(
    plan: SyncPlan,
    *,
    catalog: Catalog,
    store: IndexStore,
    dimension: int,
    vectors: list[str] | None = None,
) -> SyncResult:
    """Single writer: upsert, delete, reconcile, publish, then record in the catalog.

    All of it under the index writer lock, and newer wins (see the package docstring).
    """
    t0 = time.perf_counter()
    window = (to_utc(plan.window[0]), to_utc(plan.window[1]))
    run_id = catalog.start_run(plan.source, window, plan.mode + ("+reconcile" * plan.reconcile))
    counts = dict(plan.counts)
    try:
        with store.lock():
            generation = _apply_locked(plan, catalog, store, dimension, vectors, run_id, counts)
    except BaseException as err:
        catalog.fail_run(run_id, err, counts)
        raise
    shutil.rmtree(plan.plan_dir, ignore_errors=True)
    return SyncResult(plan.source, run_id, generation, plan.mode, counts, time.perf_counter() - t0)


def _apply_locked(
    plan: SyncPlan,
    catalog: Catalog,
    store: IndexStore,
    dimension: int,
    vectors: list[str] | None,
    run_id: int,
    counts: dict[str, int],
) -> int | None:
    """apply_sync's work; the caller holds the writer lock. Returns the live generation."""
    failed = read_lines(Path(plan.plan_dir) / "failed.jsonl")
    if _nothing_to_write(plan):
        return _record_only(plan, catalog, store, failed, run_id, counts)

    full = plan.mode == "full"
    changed = catalog.changed_since(plan.source, plan.since_run)
    stale: list[str] = []
    embedder_version, dimension, outdated = _target_model(plan, store, dimension)
    with contextlib.ExitStack() as stack:
        idx = stack.enter_context(store.writer(embedder_version, dimension, fresh=full))
        generation = idx.generation
        # What the index already holds: the writer's copy of the live generation, or for a
        # fresh build the live generation itself (closed before the writer publishes).
        ref: VectorIndex | None = idx
        if full:
            ref = _readable_live(store, stack)
        outdated_by = embedder_version if outdated else None
        rows = _upsert_partitions(
            plan, catalog, idx, ref, vectors, outdated_by, run_id, stale, counts
        )
        tombstones = _delete_tombstones(plan, catalog, idx, ref, stale)
        rows += [
            {**row(d, DELETED, plan.embedder_version, generation, run_id), "chunks": 0}
            for d in tombstones
        ]

        orphans: list[str] = []
        if plan.reconcile:
            orphans = orphan_ids(catalog, idx, plan, tombstones, changed)
            idx.delete(held_point_ids(idx, plan.source, orphans))
        rows += failed_rows(catalog, ref, plan, failed, generation, run_id, stale)
        if full:
            counts["carried"] = carry_over(plan, idx, ref, stale, changed, rows, generation, run_id)
        counts["orphans"] = len(orphans)
        counts["deleted"] = len(tombstones) + len(orphans)
        counts["stale"] = len(stale)
        counts["points"] = idx.count()

    # Published; the lock is still held, so no writer comes between the publish and the record.
    gone: set[str] = set()
    if full:
        gone = gone_ids(catalog, plan, changed)
        counts["deleted"] = counts.get("deleted", 0) + len(gone)
    rows += [deleted_row(catalog, plan.source, o, generation, run_id) for o in orphans]
    rows += [deleted_row(catalog, plan.source, o, generation, run_id) for o in sorted(gone)]
    record(catalog, rows, run_id, counts, generation)
    return generation


def _nothing_to_write(plan: SyncPlan) -> bool:
    return (
        plan.mode == "incremental"
        and not plan.reconcile
        and not plan.partitions
        and plan.counts.get("tombstones", 0) == 0
    )


def _record_only(
    plan: SyncPlan,
    catalog: Catalog,
    store: IndexStore,
    failed: list[dict[str, Any]],
    run_id: int,
    counts: dict[str, int],
) -> int | None:
    """A no-op run gets no new generation (readers keep theirs) but is still recorded."""
    counts.update(indexed=0, deleted=0, orphans=0)
    generation = store.live_generation()
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(store.open_live()) if failed and generation is not None else None
        rows = failed_rows(catalog, ref, plan, failed, generation, run_id, [])
    record(catalog, rows, run_id, counts, generation)
    return generation


def _readable_live(store: IndexStore, stack: contextlib.ExitStack) -> VectorIndex | None:
    """The live generation a full refresh compares with and carries from. None when there is
    none, or when it cannot be opened (copied in part, say): the refresh is what replaces it,
    so it is built from the source alone (`carry_over` then makes dead letters)."""
    if store.live_generation() is None:
        return None
    try:
        return stack.enter_context(store.open_live())
    except IndexError_ as err:
        log.warning("full refresh without the live generation, which cannot be read: %s", err)
        return None


def _target_model(plan: SyncPlan, store: IndexStore, dimension: int) -> tuple[str, int, bool]:
    """(model version, dimension, outdated?) of the generation this apply writes.

    A re-index may have swapped the embedder since an incremental plan was embedded (an
    Airflow retry of apply reuses the plan): such vectors cannot join the live generation.
    """
    if plan.mode != "full" and store.live_generation() is not None:
        # From the generation's metadata: opening it would load the whole index, every sync.
        live_version = store.live_embedder_version()
        if live_version is not None and live_version != plan.embedder_version:
            with store.open_live() as live:
                return live_version, live.dimension, True
    return plan.embedder_version, dimension, False


def _upsert_partitions(
    plan: SyncPlan,
    catalog: Catalog,
    idx: VectorIndex,
    ref: VectorIndex | None,
    vectors: list[str] | None,
    outdated_by: str | None,
    run_id: int,
    stale: list[str],
    counts: dict[str, int],
) -> list[dict[str, Any]]:
    """Upsert every partition's documents that are not older than what is held (the others
    go to `stale`); their catalog rows. With `outdated_by` (the live generation's model) the
    documents become dead letters instead."""
    rows: list[dict[str, Any]] = []
    indexed = 0
    for k, part in enumerate(plan.partitions):
        docs = read_lines(Path(part))  # one row per chunk, a document's chunks together
        heads = [d for d in docs if d["chunk_no"] == 0]
        # a chunk 0 row holds its document whole, and the hash the plan computed of it
        head_docs = {d["doc_id"]: Document.from_json(d) for d in heads}
        known = known_versions(catalog, ref, plan.source, list(head_docs))
        older = {i for i, doc in head_docs.items() if is_older(doc, known)}
        stale += [d["doc_id"] for d in heads if d["doc_id"] in older]
        keep = [i for i, d in enumerate(docs) if d["doc_id"] not in older]
        heads = [d for d in heads if d["doc_id"] not in older]
        if outdated_by is not None:
            rows += outdated_rows(plan, heads, outdated_by, idx.generation, run_id)
            counts["outdated"] = counts.get("outdated", 0) + len(heads)
            continue
        vec_path = Path(vectors[k]) if vectors else vectors_path(plan, docs)
        if not vec_path.exists():
            raise SemflowError(f"partition {part} has not been embedded ({vec_path})")
        vecs = np.load(vec_path)
        ids, payloads = [], []
        for i in keep:
            d = docs[i]
            doc = head_docs[d["doc_id"]]
            if d["index_text"] != doc.text:  # a chunk of a long document: its point's text
                doc = dataclasses.replace(doc, text=d["index_text"])
            payload = doc.payload(
                plan.embedder_version,
                d["truncated"],
                d["chunk_no"],
                d["chunks"],
                content_hash=d["content_hash"],
            )
            ids.append(point_id(plan.source, doc.doc_id, d["chunk_no"]))
            payloads.append(payload)
        for d in heads:
            doc = head_docs[d["doc_id"]]
            r = row(doc, INDEXED, plan.embedder_version, idx.generation, run_id, d["content_hash"])
            rows.append({**r, "truncated": bool(d["truncated"]), "chunks": d["chunks"]})
        # An update that shrank a document leaves its earlier version's last chunks behind.
        idx.delete(surplus_point_ids(idx, plan.source, {d["doc_id"]: d["chunks"] for d in heads}))
        idx.upsert(ids, vecs[keep], payloads)
        indexed += len(heads)
        log.info("upserted partition %d/%d (%d points)", k + 1, len(plan.partitions), len(ids))
    counts["indexed"] = indexed
    return rows


def _delete_tombstones(
    plan: SyncPlan,
    catalog: Catalog,
    idx: VectorIndex,
    ref: VectorIndex | None,
    stale: list[str],
) -> list[Document]:
    """Delete the plan's tombstones that are not older than what is held (the others go to
    `stale`); returns the deleted ones."""
    tombstones = [Document.from_json(d) for d in read_lines(Path(plan.plan_dir) / "deletes.jsonl")]
    known = known_versions(catalog, ref, plan.source, [d.doc_id for d in tombstones])
    stale += [d.doc_id for d in tombstones if is_older(d, known)]
    tombstones = [d for d in tombstones if not is_older(d, known)]
    idx.delete(held_point_ids(idx, plan.source, [d.doc_id for d in tombstones]))
    return tombstones
