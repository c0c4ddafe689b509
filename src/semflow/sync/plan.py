"""Step 1, plan: read the source, diff it against the catalog, write the plan to staging.

A plan is a folder under `<staging>/<source>/plan-<id>/`: `plan.json` (the `SyncPlan`),
`part-NNNNN.jsonl` (documents to embed, one row per chunk, one partition per worker),
`failed.jsonl` (documents that failed their checks), `deletes.jsonl` (tombstones), and for a
reconcile or a full refresh `live_ids.json` / `all_ids.json` (the source's ids when it was
read).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from semflow.catalog import DELETED, INDEXED, Catalog
from semflow.chunking import Chunker, chunker_for
from semflow.config import Settings, get_settings
from semflow.documents import Document
from semflow.index import IndexStore
from semflow.sources.base import Source

log = logging.getLogger("semflow.sync")

MAX_ATTEMPTS = 5
Window = tuple[datetime | None, datetime | None]


@dataclass
class SyncPlan:
    """What a sync will do; small and JSON-able (it travels through XCom)."""

    source: str
    plan_dir: str
    embedder_version: str
    window: tuple[str | None, str | None]
    mode: str  # "incremental" or "full"
    reconcile: bool
    partitions: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # The newest run id when the plan was made: catalog rows of later runs are changes other
    # syncs published meanwhile, which a full refresh or a reconcile must not undo.
    since_run: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyncPlan:
        return cls(**d)


# -- staging files --------------------------------------------------------------------
def atomic_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON; readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, default=str))
    os.replace(tmp, path)


def write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write JSON lines, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON lines file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_ids(plan: SyncPlan, name: str) -> set[str]:
    """A set of doc ids the plan saved (`live_ids.json`, `all_ids.json`)."""
    return set(json.loads((Path(plan.plan_dir) / name).read_text()))


# -- document checks -----------------------------------------------------------
def check_text(doc: Document, max_chars: int) -> tuple[str | None, str, bool]:
    """(error or None, text to index, truncated?) for one document."""
    text = doc.text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"encoding error: text is not valid UTF-8 ({err.reason} at {err.start})", "", False
    if "\x00" in text:
        return "encoding error: text contains NUL bytes", "", False
    if not text.strip():
        return "empty text", "", False
    if len(text) > max_chars:
        return None, text[:max_chars], True
    return None, text, False


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


# -- the plan ---------------------------------------------------------------------
def plan_sync(
    source: Source,
    *,
    catalog: Catalog,
    store: IndexStore,
    embedder_version: str,
    window: Window = (None, None),
    full_refresh: bool = False,
    reconcile: bool = False,
    settings: Settings | None = None,
) -> SyncPlan:
    """Extract the window (reading the whole source first, so a down source fails here)."""
    s = settings or get_settings()
    since_run = catalog.last_run_id()  # before reading the source: later runs may be newer
    live_version = store.live_embedder_version()
    if live_version is not None and live_version != embedder_version and not full_refresh:
        log.warning(
            "live index was built with %s, the embedder is %s: rebuilding with a full refresh",
            live_version,
            embedder_version,
        )
        full_refresh = True
    if live_version is None:
        full_refresh = True  # nothing published yet: build generation 1 from everything
    start, end = window
    if full_refresh:
        start = end = None

    docs = _extract(source, start, end)
    extracted = len(docs)
    retry_ids = [i for i in catalog.retryable(source.name, MAX_ATTEMPTS) if i not in docs]
    if retry_ids:
        for doc in source.fetch(retry_ids):
            docs[doc.doc_id] = doc
    live_ids = sorted(set(source.live_ids())) if (reconcile and not full_refresh) else None

    # What the catalog holds of each document, in one query; a read of the
    # whole source asks for all its rows (a scan, cheaper than looking up every id)
    whole = start is None and end is None
    held = catalog.fingerprints(source.name, None if whole else docs)
    checked: list[tuple[Document, str, bool]] = []
    failed: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    skipped = truncated = 0
    for doc in docs.values():
        st = held.get(doc.doc_id)
        if doc.deleted:
            if full_refresh or (st and st.status != DELETED):
                deletes.append(doc.to_json())
            continue
        # hashed only when the stored row could match (indexed, by this model)
        if (
            not full_refresh
            and st is not None
            and st.status == INDEXED
            and st.embedder_version == embedder_version
            and st.content_hash == doc.content_hash
        ):
            skipped += 1
            continue
        error, text, cut = check_text(doc, s.max_document_chars)
        if error:
            failed.append({**doc.to_json(), "error": error})
            continue
        truncated += cut
        checked.append((doc, text, cut))
    # the tokenizer is loaded only when there is something to split
    to_embed = chunk_rows(checked, chunker_for(s, embedder_version)) if checked else []

    plan_dir = s.staging_dir / source.name / f"plan-{uuid.uuid4().hex[:12]}"
    plan_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for k, rows in enumerate(_partitions(to_embed, s.sync_partition_size)):
        path = plan_dir / f"part-{k:05d}.jsonl"
        write_lines(path, rows)
        parts.append(str(path))
    write_lines(plan_dir / "failed.jsonl", failed)
    write_lines(plan_dir / "deletes.jsonl", deletes)
    if live_ids is not None:
        atomic_json(plan_dir / "live_ids.json", live_ids)
    if full_refresh:
        atomic_json(plan_dir / "all_ids.json", sorted(d for d, x in docs.items() if not x.deleted))
    plan = SyncPlan(
        source=source.name,
        plan_dir=str(plan_dir),
        embedder_version=embedder_version,
        window=(_iso(start), _iso(end)),
        mode="full" if full_refresh else "incremental",
        reconcile=live_ids is not None,
        partitions=parts,
        since_run=since_run,
        counts={
            "extracted": extracted,
            "retried": len(retry_ids),
            "to_embed": len(to_embed),
            "chunks": sum(len(rows) for rows in to_embed),
            "skipped": skipped,
            "failed": len(failed),
            "tombstones": len(deletes),
            "truncated": truncated,
        },
    )
    atomic_json(plan_dir / "plan.json", plan.to_dict())
    log.info("planned sync of %s: %s", source.name, json.dumps(plan.counts))
    return plan


def chunk_rows(
    checked: list[tuple[Document, str, bool]], chunker: Chunker
) -> list[list[dict[str, Any]]]:
    """The partition rows of each (document, text to index, truncated?): one row per chunk.

    Every row carries the document's fields, `content_hash`, `index_text` (the chunk), and
    `chunk_no` / `chunks`; only chunk 0's keeps the whole `text` (the others would repeat it).
    """
    out = []
    for (doc, _, cut), chunks in zip(
        checked, chunker.split_many([text for _, text, _ in checked]), strict=True
    ):
        head = {**doc.to_json(), "content_hash": doc.content_hash, "truncated": cut}
        out.append(
            [
                {**head, **({"text": ""} if k else {}), "index_text": c}
                | {"chunk_no": k, "chunks": len(chunks)}
                for k, c in enumerate(chunks)
            ]
        )
    return out


def _partitions(docs: list[list[dict[str, Any]]], size: int) -> list[list[dict[str, Any]]]:
    """Chunk rows in partitions of about `size` rows; a document's chunks stay together (apply
    writes and counts each document whole)."""
    parts: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for rows in docs:
        if current and len(current) + len(rows) > size:
            parts.append(current)
            current = []
        current.extend(rows)
    if current:
        parts.append(current)
    return parts


def _extract(source: Source, start: datetime | None, end: datetime | None) -> dict[str, Document]:
    """The window's documents by id; of two versions of one document the newer is kept."""
    docs: dict[str, Document] = {}
    for doc in source.extract(start, end):
        prev = docs.get(doc.doc_id)
        if prev is None or (doc.updated_at or datetime.min) >= (prev.updated_at or datetime.min):
            docs[doc.doc_id] = doc
    return docs
