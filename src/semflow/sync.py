"""Sync: extract the delta -> embed -> upsert -> deletes -> record.

Three steps, so a DAG can fan the embedding out over workers (`.expand()`):
  plan_sync()        extract the window, skip unchanged docs, write partitions to staging
  embed_partition()  embed one partition (resumable: content-addressed in staging)
  apply_sync()       one writer: upsert, delete, reconcile, publish a generation, then record
`run_sync()` runs all three in one process; the CLI and the DAG call the same functions.

The catalog is written only after the index generation is published, so it never marks a
document indexed that is not in the index; a crash in between means the next run re-upserts
the same deterministic ids (no duplicates).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from semflow.catalog import DELETED, FAILED, INDEXED, Catalog, DocState
from semflow.config import Settings, get_settings
from semflow.documents import Document, point_id, to_utc
from semflow.embedding import Embedder
from semflow.errors import SemflowError
from semflow.index.base import IndexStore, open_store
from semflow.sources.base import Source

log = logging.getLogger("semflow.sync")

MAX_ATTEMPTS = 5
Window = tuple[datetime | None, datetime | None]


@dataclass
class SyncPlan:
    """What a sync will do; small and JSON-able (it travels through XCom)."""

    source: str
    plan_dir: str
    model_version: str
    window: tuple[str | None, str | None]
    mode: str  # "incremental" or "full"
    reconcile: bool
    partitions: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyncPlan:
        return cls(**d)


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


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, default=str))
    os.replace(tmp, path)


def _write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _is_stale(doc: Document, state: DocState | None) -> bool:
    """A newer version of the doc was already recorded (an older window applied late)."""
    return bool(
        state
        and state.source_updated_at
        and doc.updated_at
        and state.source_updated_at > doc.updated_at
    )


# -- step 1: plan ----------------------------------------------------------------
def plan_sync(
    source: Source,
    *,
    catalog: Catalog,
    store: IndexStore,
    model_version: str,
    window: Window = (None, None),
    full_refresh: bool = False,
    reconcile: bool = False,
    settings: Settings | None = None,
) -> SyncPlan:
    """Extract the window (reading the whole source first, so a down source fails here)."""
    s = settings or get_settings()
    live_version = store.live_model_version()
    if live_version is not None and live_version != model_version and not full_refresh:
        log.warning(
            "live index was built with %s, the embedder is %s: rebuilding with a full refresh",
            live_version,
            model_version,
        )
        full_refresh = True
    if live_version is None:
        full_refresh = True  # nothing published yet: build generation 1 from everything
    start, end = window
    if full_refresh:
        start = end = None

    docs: dict[str, Document] = {}
    for doc in source.extract(start, end):
        prev = docs.get(doc.doc_id)
        if prev is None or (doc.updated_at or datetime.min) >= (prev.updated_at or datetime.min):
            docs[doc.doc_id] = doc
    extracted = len(docs)
    retry_ids = [i for i in catalog.retryable(source.name, MAX_ATTEMPTS) if i not in docs]
    if retry_ids:
        for doc in source.fetch(retry_ids):
            docs[doc.doc_id] = doc
    live_ids = sorted(set(source.live_ids())) if (reconcile and not full_refresh) else None

    states = catalog.states(source.name, docs)
    to_embed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    skipped = truncated = 0
    for doc in docs.values():
        st = states.get(doc.doc_id)
        if doc.deleted:
            if full_refresh or (st and st.status != DELETED):
                deletes.append(doc.to_json())
            continue
        if (
            not full_refresh
            and st is not None
            and st.status == INDEXED
            and st.content_hash == doc.content_hash
            and st.model_version == model_version
        ):
            skipped += 1
            continue
        error, text, cut = check_text(doc, s.max_text_chars)
        if error:
            failed.append({**doc.to_json(), "error": error})
            continue
        truncated += cut
        to_embed.append({**doc.to_json(), "index_text": text, "truncated": cut})

    plan_dir = s.staging_dir / source.name / f"plan-{uuid.uuid4().hex[:12]}"
    plan_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    size = s.sync_partition_size
    for k in range(0, len(to_embed), size):
        path = plan_dir / f"part-{k // size:05d}.jsonl"
        _write_lines(path, to_embed[k : k + size])
        parts.append(str(path))
    _write_lines(plan_dir / "failed.jsonl", failed)
    _write_lines(plan_dir / "deletes.jsonl", deletes)
    if live_ids is not None:
        _atomic_json(plan_dir / "live_ids.json", live_ids)
    if full_refresh:
        _atomic_json(plan_dir / "all_ids.json", sorted(d for d, x in docs.items() if not x.deleted))
    plan = SyncPlan(
        source=source.name,
        plan_dir=str(plan_dir),
        model_version=model_version,
        window=(_iso(start), _iso(end)),
        mode="full" if full_refresh else "incremental",
        reconcile=live_ids is not None,
        partitions=parts,
        counts={
            "extracted": extracted,
            "retried": len(retry_ids),
            "to_embed": len(to_embed),
            "skipped": skipped,
            "failed": len(failed),
            "tombstones": len(deletes),
            "truncated": truncated,
        },
    )
    _atomic_json(plan_dir / "plan.json", plan.to_dict())
    log.info("planned sync of %s: %s", source.name, json.dumps(plan.counts))
    return plan


# -- step 2: embed -----------------------------------------------------------------
def _vectors_path(plan: SyncPlan, part: str, rows: list[dict[str, Any]]) -> Path:
    h = hashlib.sha256(plan.model_version.encode())
    for r in rows:
        h.update(r["index_text"].encode("utf-8"))
        h.update(b"\0")
    cache = Path(plan.plan_dir).parent / "vectors"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{h.hexdigest()[:32]}.npy"


def embed_partition(plan: SyncPlan, part: str, embedder: Embedder) -> str:
    """Embed one partition; reuses a finished result (a retried or resumed run)."""
    if embedder.version != plan.model_version:
        raise SemflowError(
            f"plan was made for {plan.model_version} but the embedder is {embedder.version}"
        )
    rows = _read_lines(Path(part))
    out = _vectors_path(plan, part, rows)
    if out.exists():
        return str(out)
    vecs = embedder.encode([r["index_text"] for r in rows])
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, out)
    return str(out)


# -- step 3: apply -------------------------------------------------------------------
def apply_sync(
    plan: SyncPlan,
    *,
    catalog: Catalog,
    store: IndexStore,
    dimension: int,
    vectors: list[str] | None = None,
) -> SyncResult:
    """Single writer: upsert, delete, reconcile, publish, then record in the catalog."""
    t0 = time.perf_counter()
    pdir = Path(plan.plan_dir)
    window = (to_utc(plan.window[0]), to_utc(plan.window[1]))
    run_id = catalog.start_run(plan.source, window, plan.mode + ("+reconcile" * plan.reconcile))
    counts = dict(plan.counts)
    rows: list[dict[str, Any]] = []
    if _nothing_to_write(plan):
        # No new generation for a no-op run: readers keep theirs, the run is still recorded.
        counts.update(indexed=0, deleted=0, orphans=0)
        generation = store.live_generation()
        failed = _read_lines(pdir / "failed.jsonl")
        with catalog.engine.begin() as conn:
            catalog.record(_failed_rows(catalog, plan, failed, generation, run_id), conn)
            catalog.finish_run(run_id, "succeeded", counts, generation, conn=conn)
        shutil.rmtree(pdir, ignore_errors=True)
        return SyncResult(
            plan.source, run_id, generation, plan.mode, counts, time.perf_counter() - t0
        )
    try:
        with store.writer(plan.model_version, dimension, fresh=plan.mode == "full") as idx:
            generation = idx.generation
            embedded = 0
            for k, part in enumerate(plan.partitions):
                docs = _read_lines(Path(part))
                vec_path = Path(vectors[k]) if vectors else _vectors_path(plan, part, docs)
                if not vec_path.exists():
                    raise SemflowError(f"partition {part} has not been embedded ({vec_path})")
                vecs = np.load(vec_path)
                # Re-check under the writer lock: a concurrent run may have stored newer rows.
                states = catalog.states(plan.source, [d["doc_id"] for d in docs])
                keep = [
                    i
                    for i, d in enumerate(docs)
                    if not _is_stale(Document.from_json(d), states.get(d["doc_id"]))
                ]
                counts["stale"] = counts.get("stale", 0) + len(docs) - len(keep)
                ids, payloads = [], []
                for i in keep:
                    d = docs[i]
                    doc = Document.from_json({**d, "text": d["index_text"]})
                    payload = doc.payload(plan.model_version, truncated=d["truncated"])
                    payload["content_hash"] = Document.from_json(d).content_hash
                    ids.append(doc.point_id)
                    payloads.append(payload)
                    rows.append(_row(Document.from_json(d), INDEXED, plan, generation, run_id))
                    rows[-1]["content_hash"] = payload["content_hash"]
                    rows[-1]["truncated"] = bool(d["truncated"])
                idx.upsert(ids, vecs[keep], payloads)
                embedded += len(ids)
                log.info(
                    "upserted partition %d/%d (%d points)", k + 1, len(plan.partitions), len(ids)
                )
            counts["indexed"] = embedded

            tombstones = [Document.from_json(d) for d in _read_lines(pdir / "deletes.jsonl")]
            idx.delete([d.point_id for d in tombstones])
            rows += [_row(d, DELETED, plan, generation, run_id) for d in tombstones]

            orphans: list[str] = []
            if plan.reconcile:
                live = set(json.loads((pdir / "live_ids.json").read_text()))
                orphans = [
                    p["doc_id"]
                    for _, p in idx.iter_payloads(plan.source, fields=("doc_id",))
                    if p.get("doc_id") not in live
                ]
                orphans += [i for i in catalog.ids(plan.source, [INDEXED, FAILED]) if i not in live]
                orphans = sorted(set(orphans) - {d.doc_id for d in tombstones})
                idx.delete([point_id(plan.source, i) for i in orphans])
            counts["orphans"] = len(orphans)
            counts["deleted"] = len(tombstones) + len(orphans)
            counts["points"] = idx.count()

        failed = _read_lines(pdir / "failed.jsonl")
        gone: set[str] = set()
        if plan.mode == "full":
            keep_ids = set(json.loads((pdir / "all_ids.json").read_text()))
            gone = catalog.ids(plan.source, [INDEXED, FAILED, "pending"]) - keep_ids
            counts["deleted"] = counts.get("deleted", 0) + len(gone)
        rows += [_deleted_row(catalog, plan.source, o, generation, run_id) for o in orphans]
        rows += [_deleted_row(catalog, plan.source, o, generation, run_id) for o in sorted(gone)]
        rows += _failed_rows(catalog, plan, failed, generation, run_id)
        with catalog.engine.begin() as conn:
            catalog.record(_dedupe(rows), conn)
            catalog.finish_run(run_id, "succeeded", counts, generation, conn=conn)
    except BaseException as err:
        catalog.finish_run(run_id, "failed", counts, None, error=str(err)[:2000])
        raise
    shutil.rmtree(pdir, ignore_errors=True)
    return SyncResult(plan.source, run_id, generation, plan.mode, counts, time.perf_counter() - t0)


def _nothing_to_write(plan: SyncPlan) -> bool:
    return (
        plan.mode == "incremental"
        and not plan.reconcile
        and not plan.partitions
        and plan.counts.get("tombstones", 0) == 0
    )


def _failed_rows(
    catalog: Catalog,
    plan: SyncPlan,
    failed: list[dict[str, Any]],
    generation: int | None,
    run_id: int,
) -> list[dict[str, Any]]:
    """Dead letters: recorded with their reason and attempt count, retried next run."""
    prev = catalog.states(plan.source, [f["doc_id"] for f in failed])
    rows = []
    for f in failed:
        doc = Document.from_json(f)
        r = _row(doc, FAILED, plan, generation, run_id)
        r["attempts"] = (prev[doc.doc_id].attempts if doc.doc_id in prev else 0) + 1
        r["last_error"] = f["error"]
        r["model_version"] = None
        rows.append(r)
    return rows


def _deleted_row(
    catalog: Catalog, source: str, doc_id: str, generation: int | None, run_id: int
) -> dict[str, Any]:
    return {
        **_key(source, doc_id),
        "status": DELETED,
        "generation": generation,
        "run_id": run_id,
        "tenant": _tenant_of(catalog, source, doc_id),
    }


def _key(source: str, doc_id: str) -> dict[str, Any]:
    return {"source": source, "doc_id": doc_id, "point_id": point_id(source, doc_id)}


def _tenant_of(catalog: Catalog, source: str, doc_id: str) -> str:
    import sqlalchemy as sa

    from semflow.catalog import documents

    with catalog.engine.connect() as conn:
        t = conn.execute(
            sa.select(documents.c.tenant).where(
                documents.c.source == source, documents.c.doc_id == doc_id
            )
        ).scalar()
    return t or "default"


def _row(
    doc: Document, status: str, plan: SyncPlan, generation: int | None, run_id: int
) -> dict[str, Any]:
    return {
        **_key(doc.source, doc.doc_id),
        "tenant": doc.tenant,
        "content_hash": doc.content_hash,
        "model_version": plan.model_version,
        "generation": generation,
        "status": status,
        "attempts": 0,
        "last_error": None,
        "source_updated_at": doc.updated_at,
        "run_id": run_id,
    }


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        out[(r["source"], r["doc_id"])] = r
    return list(out.values())


# -- all three in one process --------------------------------------------------------
def run_sync(
    source: Source,
    *,
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    catalog: Catalog | None = None,
    store: IndexStore | None = None,
    window: Window = (None, None),
    full_refresh: bool = False,
    reconcile: bool = False,
) -> SyncResult:
    """Plan, embed every partition, apply. What `semflow sync` runs."""
    s = settings or get_settings()
    catalog = catalog or Catalog(s.catalog_database_url)
    store = store or open_store(s)
    embedder = embedder or Embedder.for_index(s, store.live_model_version())
    t0 = time.perf_counter()
    plan = plan_sync(
        source,
        catalog=catalog,
        store=store,
        model_version=embedder.version,
        window=window,
        full_refresh=full_refresh,
        reconcile=reconcile,
        settings=s,
    )
    vectors = []
    for k, part in enumerate(plan.partitions):
        vectors.append(embed_partition(plan, part, embedder))
        log.info("embedded partition %d/%d", k + 1, len(plan.partitions))
    result = apply_sync(
        plan, catalog=catalog, store=store, dimension=embedder.dimension, vectors=vectors
    )
    result.seconds = time.perf_counter() - t0
    log.info("sync of %s done: %s", source.name, json.dumps(result.counts))
    return result
