"""What a sync records besides its upserts: dead letters, orphans, and what a full refresh
carries over or drops. Called by `apply` under the index writer lock."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from semflow.catalog import FAILED, INDEXED, Catalog
from semflow.documents import Document, to_utc
from semflow.index import VectorIndex
from semflow.sync.plan import SyncPlan, read_ids
from semflow.sync.rows import (
    dead_letter,
    document_dead_letter,
    held_point_ids,
    is_older,
    known_versions,
)

log = logging.getLogger("semflow.sync")


# -- dead letters -------------------------------------------------------------------------
def failed_rows(
    catalog: Catalog,
    ref: VectorIndex | None,
    plan: SyncPlan,
    failed: list[dict[str, Any]],
    generation: int | None,
    run_id: int,
    stale: list[str],
) -> list[dict[str, Any]]:
    """Dead letters: recorded with their reason and attempt count, retried next run.

    A dead letter older than the version already held is skipped (added to `stale`).
    """
    ids = [f["doc_id"] for f in failed]
    prev = catalog.states(plan.source, ids)
    known = known_versions(catalog, ref, plan.source, ids)
    rows = []
    for f in failed:
        doc = Document.from_json(f)
        if is_older(doc, known):
            stale.append(doc.doc_id)
            continue
        attempts = (prev[doc.doc_id].attempts if doc.doc_id in prev else 0) + 1
        rows.append(
            document_dead_letter(
                doc, error=f["error"], generation=generation, run_id=run_id, attempts=attempts
            )
        )
    return rows


def outdated_rows(
    plan: SyncPlan,
    docs: list[dict[str, Any]],
    live_version: str,
    generation: int,
    run_id: int,
) -> list[dict[str, Any]]:
    """Dead letters for documents embedded with a model the live generation no longer uses.

    Not the documents' fault: recorded with 0 attempts, like those a full refresh cannot carry
    over. The next run fetches them again and embeds them with the live generation's embedder.
    """
    if docs:
        log.warning(
            "%d documents of %s were embedded with %s, but the live index generation is now "
            "built with %s (re-indexed meanwhile): recorded as dead letters for the next run",
            len(docs),
            plan.source,
            plan.embedder_version,
            live_version,
        )
    error = (
        f"embedded with {plan.embedder_version}, but the index was re-indexed with "
        f"{live_version} before this sync applied; embedded again by the next run"
    )
    return [
        document_dead_letter(
            Document.from_json(d),
            error=error,
            generation=generation,
            run_id=run_id,
            truncated=bool(d["truncated"]),
        )
        for d in docs
    ]


# -- full refresh ---------------------------------------------------------------------------
def carry_over(
    plan: SyncPlan,
    idx: VectorIndex,
    ref: VectorIndex | None,
    stale: list[str],
    changed: dict[str, dict[str, Any]],
    rows: list[dict[str, Any]],
    generation: int,
    run_id: int,
) -> int:
    """A full refresh fills its fresh generation from the plan's snapshot of the source; what
    other syncs published after that snapshot (newer versions, new documents) is carried over
    from the live generation instead of lost, every chunk of it. Returns how many points were
    copied.

    Points of another model cannot be copied, and none can without a readable live
    generation (`ref` None): those documents become dead letters (appended to `rows`) that
    the next run fetches and embeds again.
    """
    all_ids = read_ids(plan, "all_ids.json")
    wanted = set(stale) | ({i for i, r in changed.items() if r["status"] == INDEXED} - all_ids)
    if not wanted:
        return 0
    if ref is None:
        rows += [
            _refetch(
                plan,
                {**changed[i], "updated_at": changed[i]["source_updated_at"]},
                generation,
                run_id,
            )
            for i in sorted(wanted & set(changed))
        ]
        return 0
    hits = ref.retrieve(held_point_ids(ref, plan.source, sorted(wanted)), with_vectors=True)
    if ref.embedder_version == plan.embedder_version:
        vecs = np.asarray([h.payload.pop("_vector") for h in hits], dtype=np.float32)
        idx.upsert([h.id for h in hits], vecs.reshape(len(hits), -1), [h.payload for h in hits])
        return len(hits)
    # one dead letter per document: its chunk 0's
    rows += [
        _refetch(plan, h.payload, generation, run_id) for h in hits if not h.payload.get("chunk_no")
    ]
    return 0


def _refetch(plan: SyncPlan, doc: dict[str, Any], generation: int, run_id: int) -> dict[str, Any]:
    """A dead letter for a document a full refresh could not carry over (`doc`: its payload,
    or its catalog row with `updated_at`)."""
    return dead_letter(
        plan.source,
        str(doc["doc_id"]),
        tenant=doc.get("tenant") or "default",
        content_hash=doc.get("content_hash"),
        updated_at=to_utc(doc.get("updated_at")),
        error="changed while a full refresh embedded the source; embedded again by the next run",
        generation=generation,
        run_id=run_id,
        truncated=bool(doc.get("truncated")),
    )


def gone_ids(catalog: Catalog, plan: SyncPlan, changed: dict[str, dict[str, Any]]) -> set[str]:
    """After a full refresh: documents the catalog holds that the source no longer has.

    Those another sync published after the plan's snapshot are not gone.
    """
    keep = read_ids(plan, "all_ids.json")
    return catalog.ids(plan.source, [INDEXED, FAILED]) - keep - set(changed)


# -- reconcile ---------------------------------------------------------------------------
def orphan_ids(
    catalog: Catalog,
    idx: VectorIndex,
    plan: SyncPlan,
    tombstones: list[Document],
    changed: dict[str, dict[str, Any]],
) -> list[str]:
    """Documents in the index or the catalog that the source's live ids no longer list."""
    live = read_ids(plan, "live_ids.json")
    orphans = [
        p["doc_id"]
        for _, p in idx.iter_payloads(plan.source, fields=("doc_id",))
        if p.get("doc_id") not in live
    ]
    orphans += [i for i in catalog.ids(plan.source, [INDEXED, FAILED]) if i not in live]
    # A document another sync indexed after the live ids were read is not an orphan.
    return sorted(set(orphans) - {d.doc_id for d in tombstones} - set(changed))
