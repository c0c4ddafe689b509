"""Sync: extract the delta -> embed -> upsert -> deletes -> record.

Three steps, so a DAG can fan the embedding out over workers (`.expand()`):
  plan_sync()        extract the window, skip unchanged docs, write partitions to staging
  embed_partition()  embed one partition (resumable: content-addressed in staging)
  apply_sync()       one writer: upsert, delete, reconcile, publish a generation, then record
`run_sync()` runs all three in one process; the CLI and the DAG call the same functions.

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

import contextlib
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

from semflow.catalog import DELETED, FAILED, INDEXED, Catalog
from semflow.config import Settings, get_settings
from semflow.documents import Document, point_id, to_utc
from semflow.embedding import Embedder
from semflow.errors import SemflowError
from semflow.index import IndexStore, VectorIndex, open_store
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
    # The newest run id when the plan was made: catalog rows of later runs are changes other
    # syncs published meanwhile, which a full refresh or a reconcile must not undo.
    since_run: int | None = None

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


def _is_older(doc: Document, known: dict[str, datetime]) -> bool:
    """A newer version of the doc is already held (an older window applied late).

    Equal timestamps are not older (a re-run of the same version), and a document without
    `updated_at` cannot be ordered, so the last writer wins for it.
    """
    seen = known.get(doc.doc_id)
    return bool(seen and doc.updated_at and seen > doc.updated_at)


def _known_versions(
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
    since_run = catalog.last_run_id()  # before reading the source: later runs may be newer
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
        since_run=since_run,
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
    """Single writer: upsert, delete, reconcile, publish, then record in the catalog.

    All of it under the index writer lock, and newer wins (see the module docstring).
    """
    t0 = time.perf_counter()
    window = (to_utc(plan.window[0]), to_utc(plan.window[1]))
    run_id = catalog.start_run(plan.source, window, plan.mode + ("+reconcile" * plan.reconcile))
    counts = dict(plan.counts)
    try:
        with store.lock():
            generation = _apply_locked(plan, catalog, store, dimension, vectors, run_id, counts)
    except BaseException as err:
        catalog.finish_run(run_id, "failed", counts, None, error=str(err)[:2000])
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
    pdir = Path(plan.plan_dir)
    failed = _read_lines(pdir / "failed.jsonl")
    if _nothing_to_write(plan):
        # No new generation for a no-op run: readers keep theirs, the run is still recorded.
        counts.update(indexed=0, deleted=0, orphans=0)
        generation = store.live_generation()
        with contextlib.ExitStack() as stack:
            ref = (
                stack.enter_context(store.open_live())
                if failed and generation is not None
                else None
            )
            rows = _failed_rows(catalog, ref, plan, failed, generation, run_id, [])
        _record(catalog, rows, run_id, counts, generation)
        return generation

    full = plan.mode == "full"
    changed = catalog.changed_since(plan.source, plan.since_run)
    rows: list[dict[str, Any]] = []
    stale: list[str] = []
    model_version, outdated = plan.model_version, False
    if not full and store.live_generation() is not None:
        # A re-index may have swapped the embedder since this plan was embedded (an Airflow
        # retry of apply reuses the plan): such vectors cannot join the live generation.
        with store.open_live() as live:
            if live.model_version is not None and live.model_version != plan.model_version:
                model_version, dimension, outdated = live.model_version, live.dimension, True
    with contextlib.ExitStack() as stack:
        idx = stack.enter_context(store.writer(model_version, dimension, fresh=full))
        generation = idx.generation
        # What the index already holds: the writer's copy of the live generation, or for a
        # fresh build the live generation itself (closed before the writer publishes).
        ref: VectorIndex | None = idx
        if full:
            ref = (
                None if store.live_generation() is None else stack.enter_context(store.open_live())
            )
        indexed = 0
        for k, part in enumerate(plan.partitions):
            docs = _read_lines(Path(part))
            known = _known_versions(catalog, ref, plan.source, [d["doc_id"] for d in docs])
            keep = []
            for i, d in enumerate(docs):
                if _is_older(Document.from_json(d), known):
                    stale.append(d["doc_id"])
                else:
                    keep.append(i)
            if outdated:
                rows += _outdated_rows(
                    plan, [docs[i] for i in keep], model_version, generation, run_id
                )
                counts["outdated"] = counts.get("outdated", 0) + len(keep)
                continue
            vec_path = Path(vectors[k]) if vectors else _vectors_path(plan, part, docs)
            if not vec_path.exists():
                raise SemflowError(f"partition {part} has not been embedded ({vec_path})")
            vecs = np.load(vec_path)
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
            indexed += len(ids)
            log.info("upserted partition %d/%d (%d points)", k + 1, len(plan.partitions), len(ids))
        counts["indexed"] = indexed

        tombstones = [Document.from_json(d) for d in _read_lines(pdir / "deletes.jsonl")]
        known = _known_versions(catalog, ref, plan.source, [d.doc_id for d in tombstones])
        stale += [d.doc_id for d in tombstones if _is_older(d, known)]
        tombstones = [d for d in tombstones if not _is_older(d, known)]
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
            # A document another sync indexed after the live ids were read is not an orphan.
            orphans = sorted(set(orphans) - {d.doc_id for d in tombstones} - set(changed))
            idx.delete([point_id(plan.source, i) for i in orphans])
        rows += _failed_rows(catalog, ref, plan, failed, generation, run_id, stale)
        if full:
            counts["carried"] = _carry_over(
                plan, idx, ref, stale, changed, rows, generation, run_id
            )
        counts["orphans"] = len(orphans)
        counts["deleted"] = len(tombstones) + len(orphans)
        counts["stale"] = len(stale)
        counts["points"] = idx.count()

    # Published; the lock is still held, so no writer comes between the publish and the record.
    gone: set[str] = set()
    if full:
        keep_ids = set(json.loads((pdir / "all_ids.json").read_text()))
        gone = catalog.ids(plan.source, [INDEXED, FAILED]) - keep_ids - set(changed)
        counts["deleted"] = counts.get("deleted", 0) + len(gone)
    rows += [_deleted_row(catalog, plan.source, o, generation, run_id) for o in orphans]
    rows += [_deleted_row(catalog, plan.source, o, generation, run_id) for o in sorted(gone)]
    _record(catalog, rows, run_id, counts, generation)
    return generation


def _carry_over(
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
    from the live generation instead of lost. Returns how many points were copied.

    Points of another model cannot be copied: those documents become dead letters that the
    next run fetches and embeds again.
    """
    all_ids = set(json.loads((Path(plan.plan_dir) / "all_ids.json").read_text()))
    wanted = set(stale) | ({i for i, r in changed.items() if r["status"] == INDEXED} - all_ids)
    if ref is None or not wanted:
        return 0
    hits = ref.retrieve([point_id(plan.source, i) for i in sorted(wanted)], with_vectors=True)
    if ref.model_version == plan.model_version:
        vecs = np.asarray([h.payload.pop("_vector") for h in hits], dtype=np.float32)
        idx.upsert([h.id for h in hits], vecs.reshape(len(hits), -1), [h.payload for h in hits])
        return len(hits)
    for h in hits:
        p = h.payload
        rows.append(
            {
                **_key(plan.source, str(p["doc_id"])),
                "tenant": p.get("tenant") or "default",
                "content_hash": p.get("content_hash"),
                "model_version": None,
                "generation": generation,
                "status": FAILED,
                "attempts": 0,
                "last_error": "changed while a full refresh embedded the source; "
                "embedded again by the next run",
                "truncated": bool(p.get("truncated")),
                "source_updated_at": to_utc(p.get("updated_at")),
                "run_id": run_id,
            }
        )
    return 0


def _outdated_rows(
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
            plan.model_version,
            live_version,
        )
    rows = []
    for d in docs:
        r = _row(Document.from_json(d), FAILED, plan, generation, run_id)
        r.update(
            model_version=None,
            truncated=bool(d["truncated"]),
            last_error=f"embedded with {plan.model_version}, but the index was re-indexed with "
            f"{live_version} before this sync applied; embedded again by the next run",
        )
        rows.append(r)
    return rows


def _record(
    catalog: Catalog,
    rows: list[dict[str, Any]],
    run_id: int,
    counts: dict[str, int],
    generation: int | None,
) -> None:
    with catalog.transaction() as conn:
        catalog.record(_dedupe(rows), conn)
        catalog.finish_run(run_id, "succeeded", counts, generation, conn=conn)


def _nothing_to_write(plan: SyncPlan) -> bool:
    return (
        plan.mode == "incremental"
        and not plan.reconcile
        and not plan.partitions
        and plan.counts.get("tombstones", 0) == 0
    )


def _failed_rows(
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
    known = _known_versions(catalog, ref, plan.source, ids)
    rows = []
    for f in failed:
        doc = Document.from_json(f)
        if _is_older(doc, known):
            stale.append(doc.doc_id)
            continue
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
        "tenant": catalog.tenant_of(source, doc_id) or "default",
    }


def _key(source: str, doc_id: str) -> dict[str, Any]:
    return {"source": source, "doc_id": doc_id, "point_id": point_id(source, doc_id)}


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
