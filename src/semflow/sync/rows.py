"""The catalog rows a sync records, and "newer wins" against what is already held."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from semflow.catalog import DELETED, FAILED, Catalog
from semflow.documents import Document, point_id, to_utc
from semflow.index import VectorIndex


# -- newer wins -------------------------------------------------------------------------
def is_older(doc: Document, known: dict[str, datetime]) -> bool:
    """A newer version of the doc is already held (an older window applied late).

    Equal timestamps are not older (a re-run of the same version), and a document without
    `updated_at` cannot be ordered, so the last writer wins for it.
    """
    seen = known.get(doc.doc_id)
    return bool(seen and doc.updated_at and seen > doc.updated_at)


def known_versions(
    catalog: Catalog, index: VectorIndex | None, source: str, doc_ids: list[str]
) -> dict[str, datetime]:
    """The newest `updated_at` the catalog or the index holds for each document.

    The index is asked too because a crash between a publish and its catalog commit leaves
    the index ahead of the catalog.
    """
    known = {
        i: st.source_updated_at
        for i, st in catalog.states(source, doc_ids).items()
        if st.source_updated_at is not None
    }
    if index is not None and doc_ids:
        for hit in index.retrieve([point_id(source, i) for i in doc_ids]):
            ts = to_utc(hit.payload.get("updated_at"))
            i = str(hit.payload.get("doc_id"))
            if ts is not None and (i not in known or ts > known[i]):
                known[i] = ts
    return known


# -- chunks ------------------------------------------------------------------------------
def held_chunks(index: VectorIndex, source: str, doc_ids: Sequence[str]) -> dict[str, int]:
    """How many chunk points `index` holds for each of these documents that it has: chunk 0's
    payload counts them (a point written before chunking is the one chunk of its document)."""
    hits = index.retrieve([point_id(source, i) for i in doc_ids]) if doc_ids else []
    return {str(h.payload.get("doc_id")): int(h.payload.get("chunks") or 1) for h in hits}


def held_point_ids(index: VectorIndex, source: str, doc_ids: Sequence[str]) -> list[str]:
    """Every point `index` holds for these documents: all their chunks."""
    held = held_chunks(index, source, doc_ids)
    return [point_id(source, i, n) for i, count in held.items() for n in range(count)]


def surplus_point_ids(index: VectorIndex, source: str, chunks: Mapping[str, int]) -> list[str]:
    """The chunks `index` holds beyond each document's new chunk count (`chunks`): what is
    left of a longer earlier version once the new one is upserted."""
    held = held_chunks(index, source, list(chunks))
    return [point_id(source, i, n) for i, count in held.items() for n in range(chunks[i], count)]


# -- rows ----------------------------------------------------------------------------------
def key(source: str, doc_id: str) -> dict[str, Any]:
    """The columns that name a document."""
    return {"source": source, "doc_id": doc_id, "point_id": point_id(source, doc_id)}


def row(
    doc: Document,
    status: str,
    embedder_version: str,
    generation: int | None,
    run_id: int,
    content_hash: str | None = None,
) -> dict[str, Any]:
    """A document indexed (or deleted) by this run; `content_hash`: the one already computed
    (a plan's), not computed again."""
    return {
        **key(doc.source, doc.doc_id),
        "tenant": doc.tenant,
        "content_hash": content_hash or doc.content_hash,
        "embedder_version": embedder_version,
        "generation": generation,
        "status": status,
        "attempts": 0,
        "last_error": None,
        "source_updated_at": doc.updated_at,
        "run_id": run_id,
    }


def dead_letter(
    source: str,
    doc_id: str,
    *,
    tenant: str,
    content_hash: str | None,
    updated_at: datetime | None,
    error: str,
    generation: int | None,
    run_id: int,
    attempts: int = 0,
    truncated: bool | None = None,
) -> dict[str, Any]:
    """A document not in the index (no model version) that the next run fetches again.

    `attempts` counts the document's own failures: 0 when it is not the document's fault.
    `truncated=None` leaves the column out of the row.
    """
    out = {
        **key(source, doc_id),
        "tenant": tenant,
        "content_hash": content_hash,
        "embedder_version": None,
        "generation": generation,
        "status": FAILED,
        "attempts": attempts,
        "last_error": error,
        "source_updated_at": updated_at,
        "run_id": run_id,
    }
    if truncated is not None:
        out["truncated"] = truncated
    return out


def document_dead_letter(doc: Document, **rest: Any) -> dict[str, Any]:
    """`dead_letter` for a document this sync fetched: its key, tenant, hash and date come
    from `doc`; `rest` are dead_letter's other arguments (error, generation, run_id, ...)."""
    return dead_letter(
        doc.source,
        doc.doc_id,
        tenant=doc.tenant,
        content_hash=doc.content_hash,
        updated_at=doc.updated_at,
        **rest,
    )


def deleted_row(
    catalog: Catalog, source: str, doc_id: str, generation: int | None, run_id: int
) -> dict[str, Any]:
    """A document gone from the source, known only by its id."""
    return {
        **key(source, doc_id),
        "status": DELETED,
        "chunks": 0,
        "generation": generation,
        "run_id": run_id,
        "tenant": catalog.tenant_of(source, doc_id) or "default",
    }


def record(
    catalog: Catalog,
    rows: list[dict[str, Any]],
    run_id: int,
    counts: dict[str, int],
    generation: int | None,
) -> None:
    """Write the rows (the last one of a document wins) and finish the run, in one commit."""
    with catalog.transaction() as conn:
        catalog.record(_dedupe(rows), conn)
        catalog.finish_run(run_id, "succeeded", counts, generation, conn=conn)


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        out[(r["source"], r["doc_id"])] = r
    return list(out.values())
