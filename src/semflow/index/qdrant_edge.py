"""Embedded backend: qdrant-edge shards on local disk, one directory per generation.

Layout under `root` (e.g. var/index/semflow/):
  LIVE            the live generation number, replaced atomically (write tmp + rename)
  WRITER.lock     flock held by the one writer (see semflow.index.lock)
  gen-000007/     an edge shard + meta.json + manifest.json (the shard's files and sizes,
                  checked before it is opened: semflow.index.edge_manifest)

Published generations are immutable, so their shards are created with the WAL off: any
number of readers (service workers, the CLI) can open them at once. A writer clones the
live generation into N+1, updates the clone and publishes it; a crashed writer leaves an
unpublished directory that the next writer removes.

The clone costs what changes, not the index (`clone_generation`): the big files of sealed
(non-appendable) segments, which qdrant-edge never writes again (vectors, HNSW links, id
mappings, payload pages, keyword-index maps), are hard-linked; everything else (the
appendable segment, deletion flags, versions, trackers) is copied, holes kept. Readers of N
keep their files: the writer of N+1 only ever writes copies or new files, and the engine
replaces its small metadata files by rename. The writer checks that no linked file changed
before it publishes (`IndexError_` otherwise; `tests/unit/test_index_clone.py` proves it).
It opens its clone on the engine's cold tier, so it reads only what it changes
(`semflow.index.edge_tier`), and publishes it on the hot tier readers open.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semflow.errors import IndexError_
from semflow.index.base import (
    INDEXED_FIELDS,
    RRF_K,
    SPARSE_VECTOR,
    TENANT_SPACES,
    Hit,
    IndexStore,
    SearchQuery,
    VectorIndex,
    check_point_count,
    hybrid_candidates,
    stored_embedder_version,
)
from semflow.index.edge_manifest import MANIFEST, MANIFEST_FLAG, check_manifest, write_manifest
from semflow.index.edge_tier import durable_write, to_cold, to_hot
from semflow.index.lock import file_lock

if TYPE_CHECKING:
    from semflow.sparse import LexicalEncoder

_GEN_PREFIX = "gen-"
_UPSERT_CHUNK = 1024


# Files of a sealed segment that qdrant-edge writes once, when the optimizer builds the
# segment, and never again (a delete only flips flags in the other files): safe to share
# between generations by hard link. Paths relative to the segment directory.
_SEALED_IMMUTABLE = (
    "vector_storage*/matrix.dat",
    "vector_index*/links*.bin",
    "vector_index*/graph.bin",
    "id_tracker.mappings",
    # the id tracker on the cold tier: its mappings (versions and deletions are elsewhere)
    "id_tracker.i2e",
    "id_tracker.e2i",
    "id_tracker.is_uuid",
    "payload_storage/page_*.dat",
    "payload_index/*-map/point_to_values.bin",
    "payload_index/*-map/values_to_points.bin",
    # sparse vectors: the immutable inverted index and the stored vectors' pages
    "vector_index-*/inverted_index.dat",
    "vector_storage-*/store/page_*.dat",
)
# Payload indexes that stay in RAM (on the heap, parsed when a generation is opened): the
# tenant filter is part of every search. The other payload indexes, the payloads and the id
# tracker are memory-mapped on the cold tier: opening a generation parses none of them, so
# a writer's copy and a reader's swap open about twice as fast and each process holds a
# tenth of the heap, searches as fast (benchmarks/index_open.py); a filter on `type`,
# `source`, `doc_id` or `labels` reads its pages on first use, from the page cache that all
# processes share.
_HOT_FIELDS = ("tenant",)
# Vector storages of sealed segments; an appendable segment stores its vectors in chunks.
_SEALED_STORAGE = {"Mmap", "InRamMmap"}


@dataclass
class CloneStats:
    """What cloning a generation cost: files hard-linked (shared, nothing written) and files
    copied; bytes are those on disk (holes of sparse files do not count)."""

    linked_files: int = 0
    linked_bytes: int = 0
    copied_files: int = 0
    copied_bytes: int = 0
    # (path in the clone, inode, size, mtime_ns) of every linked file, checked before publish
    linked: list[tuple[str, int, int, int]] = field(default_factory=list, repr=False)

    def to_meta(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "linked"}


def _sealed(segment: Path) -> bool:
    """A segment the optimizer wrote in one go (all vector storages sealed): only then are
    its `_SEALED_IMMUTABLE` files never written again. Unknown layouts count as appendable."""
    try:
        cfg = json.loads((segment / "segment.json").read_text())["config"]
        storages = [v.get("storage_type") for v in cfg.get("vector_data", {}).values()]
        sparse = [v["index"]["index_type"] for v in cfg.get("sparse_vector_data", {}).values()]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False
    return (
        bool(storages)
        and all(st in _SEALED_STORAGE for st in storages)
        and all(ix != "MutableRam" for ix in sparse)
    )


def _copy_sparse(src: Path, dst: Path) -> int:
    """Copy `src` to `dst` keeping holes (appendable segments preallocate mostly-empty
    pages); returns the data bytes copied."""
    copied = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
                end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole is left
                    break
                start, end = pos, size  # no hole lookup here: copy the rest as data
            _copy_range(fin.fileno(), fout.fileno(), start, end)
            copied += end - start
            pos = end
        fout.truncate(size)
    shutil.copystat(src, dst)
    return copied


def _copy_range(fin: int, fout: int, start: int, end: int) -> None:
    """Copy bytes [start, end) to the same offsets: in the kernel where the filesystem can,
    through a buffer where it cannot (some overlay and network filesystems)."""
    off = start
    with contextlib.suppress(OSError):
        while off < end:
            n = os.copy_file_range(fin, fout, end - off, off, off)
            if n == 0:
                break
            off += n
    while off < end:
        chunk = os.pread(fin, min(end - off, 1 << 20), off)
        if not chunk:
            break
        off += os.pwrite(fout, chunk, off)


def clone_generation(src: Path, dst: Path) -> CloneStats:
    """`dst` as a writable clone of the published shard `src` (without its meta.json and
    manifest.json): the immutable files of sealed segments hard-linked, everything else
    copied."""
    stats = CloneStats()
    for dirpath, _, files in os.walk(src):
        here = Path(dirpath)
        rel_dir = here.relative_to(src)
        (dst / rel_dir).mkdir(parents=True, exist_ok=True)
        seg = _segment_of(rel_dir)
        sealed = seg is not None and _sealed(src / seg)
        for name in files:
            if rel_dir == Path(".") and name in ("meta.json", MANIFEST):
                continue
            s, d = here / name, dst / rel_dir / name
            in_seg = str((rel_dir / name).relative_to(seg)) if seg is not None else ""
            if sealed and any(fnmatch.fnmatch(in_seg, pat) for pat in _SEALED_IMMUTABLE):
                try:
                    os.link(s, d)
                except OSError:  # a filesystem without hard links: a copy is always safe
                    stats.copied_bytes += _copy_sparse(s, d)
                    stats.copied_files += 1
                    continue
                st = d.stat()
                stats.linked_files += 1
                stats.linked_bytes += st.st_blocks * 512  # allocated: pages may be sparse
                stats.linked.append((str(d), st.st_ino, st.st_size, st.st_mtime_ns))
            else:
                stats.copied_bytes += _copy_sparse(s, d)
                stats.copied_files += 1
    return stats


def _segment_of(rel_dir: Path) -> Path | None:
    """The segment directory (`segments/<uuid>`, relative) that `rel_dir` lies in, if any."""
    parts = rel_dir.parts
    return Path(*parts[:2]) if len(parts) >= 2 and parts[0] == "segments" else None


def _check_linked_untouched(stats: CloneStats, base: int) -> None:
    """Refuse to publish when the engine wrote to a file shared with generation `base`: the
    sharing rests on those files being immutable, so such an engine must not be used."""
    for path, ino, size, mtime in stats.linked:
        try:
            st = os.stat(path)
        except FileNotFoundError:  # the optimizer replaced the segment: the link is gone
            continue
        if st.st_ino == ino and (st.st_size, st.st_mtime_ns) != (size, mtime):
            raise IndexError_(
                f"qdrant-edge wrote to {path}, a file shared with generation {base}; "
                "this engine version cannot share files between generations"
            )


class EdgeIndex(VectorIndex):
    """One generation opened with qdrant-edge."""

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        shard: Any,
        writable: bool,
        lexical: LexicalEncoder | None = None,
        seal_every: int | None = None,
    ) -> None:
        """`seal_every` (a writer's): index the appendable segment as a sealed one each time
        this many points have been upserted into it."""
        super().__init__(int(meta["generation"]), int(meta["dimension"]), meta, lexical)
        self.path = path
        self._shard = shard
        self._writable = writable
        self._seal_every = seal_every
        self._unsealed = 0

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _filter(terms: list[tuple[str, list[Any]]]) -> Any:
        import qdrant_edge as q

        must = [
            q.FieldCondition(
                key=key, match=q.MatchValue(values[0]) if len(values) == 1 else q.MatchAny(values)
            )
            for key, values in terms
        ]
        return q.Filter(must=must) if must else None

    def _check_writable(self) -> None:
        if not self._writable:
            raise IndexError_(f"generation {self.generation} is published and read-only")

    # -- writes ------------------------------------------------------------
    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        import qdrant_edge as q

        self._check_writable()
        if len(ids) != len(vectors) or len(ids) != len(payloads):
            raise ValueError("ids, vectors and payloads must have the same length")
        vecs = self._vectors(ids, vectors)
        sparse = self._sparse_of(payloads)
        self.chunked = self.chunked or any(p.get("chunk_no") for p in payloads)
        for i in range(0, len(ids), _UPSERT_CHUNK):
            dense = vecs[i : i + _UPSERT_CHUNK].tolist()
            if sparse is not None:
                # the dense vector keeps the default name "": older generations have only it
                dense = [
                    {"": d, SPARSE_VECTOR: q.SparseVector(t.indices, t.values)}
                    for d, t in zip(dense, sparse[i : i + _UPSERT_CHUNK], strict=True)
                ]
            pts = [
                q.Point(id=pid, vector=vec, payload=pl)
                for pid, vec, pl in zip(
                    ids[i : i + _UPSERT_CHUNK], dense, payloads[i : i + _UPSERT_CHUNK], strict=True
                )
            ]
            self._shard.update(q.UpdateOperation.upsert_points(pts))
            self._unsealed += len(pts)
            if self._seal_every is not None and self._unsealed >= self._seal_every:
                # Without this a big write lands in one appendable segment, which the final
                # optimize() indexes whole: one segment, searched on one thread.
                self._shard.optimize()
                self._unsealed = 0

    def delete(self, ids: Sequence[str]) -> None:
        import qdrant_edge as q

        self._check_writable()
        if ids:
            self._shard.update(q.UpdateOperation.delete_points(list(ids)))

    # -- reads -------------------------------------------------------------
    def _search(self, query: SearchQuery) -> list[Hit]:
        import qdrant_edge as q

        if query.mode == "dense":
            req = q.QueryRequest(
                limit=query.top_k,
                query=q.Query.Nearest(query.vector),
                filter=query.filter,
                with_payload=True,
                score_threshold=query.score_threshold,
            )
            return self._hits(self._shard.query(req))
        assert query.sparse is not None
        lexical = q.Query.Nearest(
            q.SparseVector(query.sparse.indices, query.sparse.values), using=SPARSE_VECTOR
        )
        if query.mode == "sparse":
            req = q.QueryRequest(
                limit=query.top_k, query=lexical, filter=query.filter, with_payload=True
            )
            return self._hits(self._shard.query(req))
        n = hybrid_candidates(query.top_k)
        req = q.QueryRequest(
            limit=query.top_k,
            prefetches=[
                q.Prefetch(limit=n, query=q.Query.Nearest(query.vector), filter=query.filter),
                q.Prefetch(limit=n, query=lexical, filter=query.filter),
            ],
            query=q.Fusion.Rrf(k=RRF_K),
            filter=query.filter,
            with_payload=True,
        )
        return self._hits(self._shard.query(req))

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Hit]:
        recs = self._shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return self._records(recs, with_vectors)

    def _count(self, flt: Any) -> int:
        import qdrant_edge as q

        if flt is None:
            # the segments' live-point counters: exact, and free (an exact count with no
            # filter walks every point: 0.1 s of each publish at 1M points)
            return int(self._shard.info().points_count)
        return int(self._shard.count(q.CountRequest(exact=True, filter=flt)))

    def _scroll(
        self, flt: Any, fields: list[str] | bool, offset: Any, with_vectors: bool = False
    ) -> tuple[list[Any], Any]:
        import qdrant_edge as q

        req = q.ScrollRequest(
            offset=offset, limit=1000, filter=flt, with_payload=fields, with_vector=with_vectors
        )
        return self._shard.scroll(req)

    def has_chunks(self) -> bool:
        """Whether some point is a document's second chunk or later (a scan in the engine:
        `chunk_no` has no payload index)."""
        import qdrant_edge as q

        cond = q.FieldCondition(key="chunk_no", range=q.RangeFloat(gt=0))
        return self._count(q.Filter(must=[cond])) > 0

    def flush(self) -> None:
        self._shard.flush()

    def optimize(self) -> None:
        """Run edge's optimizers (they never run on their own): segments above the indexing
        threshold get their HNSW graph, small appended segments are merged. Without this a
        100k-point generation is searched by brute force (18 ms instead of ~2 ms)."""
        self._check_writable()
        self._shard.optimize()

    def close(self) -> None:
        if self._shard is not None:
            if self._writable:
                self._shard.flush()
            self._shard.close()
            self._shard = None


class EdgeStore(IndexStore):
    """Generations of one collection on local disk."""

    def __init__(
        self,
        root: Path | str,
        lock_timeout_s: float = 120.0,
        keep: int = 3,
        lexical: LexicalEncoder | None = None,
        indexing_threshold_kb: int | None = None,
        segment_points: int | None = None,
    ) -> None:
        """`lexical`: the encoder of the sparse vectors a fresh generation gets beside the
        dense ones (None: dense only). `indexing_threshold_kb`: the engine's, for shards this
        store creates (None: the engine's default); tests lower it to get sealed segments from
        a few points. `segment_points`: a writer seals a segment every this many points, and
        the engine's merges of a fresh generation stop at that size (None: the engine's
        defaults: one segment per write)."""
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s
        self.keep = keep
        self.lexical = lexical
        self.indexing_threshold_kb = indexing_threshold_kb
        self.segment_points = segment_points

    # -- layout ------------------------------------------------------------
    def _gen_dir(self, gen: int) -> Path:
        return self.root / f"{_GEN_PREFIX}{gen:06d}"

    def generations(self) -> list[int]:
        if not self.root.exists():
            return []
        gens = []
        for p in self.root.iterdir():
            if p.name.startswith(_GEN_PREFIX) and (p / "meta.json").exists():
                with contextlib.suppress(ValueError):
                    gens.append(int(p.name[len(_GEN_PREFIX) :]))
        return sorted(gens)

    def live_generation(self) -> int | None:
        live = self.root / "LIVE"
        if not live.exists():
            return None
        text = live.read_text().strip()
        if not text.isdigit():
            raise IndexError_(f"{live} is corrupt (expected a generation number, got {text!r})")
        return int(text)

    def meta(self, gen: int) -> dict[str, Any]:
        path = self._gen_dir(gen) / "meta.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise IndexError_(f"generation {gen} has no metadata at {path}") from None

    def live_embedder_version(self) -> str | None:
        gen = self.live_generation()
        return None if gen is None else self.embedder_version_of(gen)

    def embedder_version_of(self, generation: int) -> str | None:
        return stored_embedder_version(self.meta(generation))

    # -- reading -----------------------------------------------------------
    def open_generation(self, gen: int) -> EdgeIndex:
        import qdrant_edge as q

        path = self._gen_dir(gen)
        meta = self.meta(gen)
        check_manifest(gen, path, meta)
        try:
            shard = q.EdgeShard.load(str(path))
        except Exception as err:  # the engine raises a bare Exception
            raise IndexError_(f"cannot open index generation {gen} at {path}: {err}") from err
        return EdgeIndex(path, meta, shard, writable=False, lexical=self.lexical)

    def _where(self) -> str:
        return f"at {self.root}"

    # -- writing -----------------------------------------------------------
    def _acquire_lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(
            self.root / "WRITER.lock", self.lock_timeout_s, f"the index at {self.root}"
        )

    def _remove_unpublished(self, live: int | None) -> None:
        for p in self.root.iterdir():
            if not p.name.startswith(_GEN_PREFIX):
                continue
            try:
                gen = int(p.name[len(_GEN_PREFIX) :])
            except ValueError:
                continue
            if live is None or gen > live or not (p / "meta.json").exists():
                shutil.rmtree(p, ignore_errors=True)

    def _write(
        self, live: int | None, embedder_version: str, dimension: int, fresh: bool
    ) -> Iterator[EdgeIndex]:
        import qdrant_edge as q

        self._remove_unpublished(live)
        base = None if fresh else live
        base_meta: dict[str, Any] | None = None
        if base is not None:
            base_meta = self.meta(base)  # read once: the checks below and the new meta need it
            self._check_embedder(base, stored_embedder_version(base_meta), embedder_version)
        gen = self._next_generation(live)
        path = self._gen_dir(gen)
        meta = {
            "generation": gen,
            "embedder_version": embedder_version,
            "dimension": dimension,
            "based_on": base,
            **self._sparse_layout(base_meta),
            # a fresh generation holds no chunked document until one is upserted
            "chunked": False if base_meta is None else base_meta.get("chunked"),
        }
        clone = hot = None
        if base is not None:
            check_manifest(base, self._gen_dir(base), base_meta)
            clone = clone_generation(self._gen_dir(base), path)
            meta["clone"] = clone.to_meta()
            # see semflow.index.edge_tier: the copy does not read the vectors it keeps
            hot = to_cold(path)
            shard = q.EdgeShard.load(str(path))
        else:
            sparse = (
                {SPARSE_VECTOR: q.EdgeSparseVectorParams(modifier=q.Modifier.Idf)}
                if meta["sparse_encoder"]
                else None
            )
            cfg = q.EdgeConfig(
                vectors=q.EdgeVectorParams(size=dimension, distance=q.Distance.Cosine),
                sparse_vectors=sparse,
                optimizers=self._optimizers(dimension),
                wal_enabled=False,
                # See _HOT_FIELDS: memory-mapped, read on first touch, not loaded at open.
                payload_memory=q.Memory.Cold,
                id_tracker_memory=q.Memory.Cold,
            )
            shard = q.EdgeShard.create(str(path), cfg)
            for name in INDEXED_FIELDS:
                schema = (
                    q.PayloadSchemaType.Keyword
                    if name in _HOT_FIELDS
                    else q.KeywordIndexParams(memory=q.Memory.Cold)
                )
                shard.update(q.UpdateOperation.create_field_index(name, schema))
        index = EdgeIndex(
            path, meta, shard, writable=True, lexical=self.lexical, seal_every=self.segment_points
        )
        try:
            if base_meta is not None:  # a damaged base must not be published again as whole
                check_point_count(base, index.count(), base_meta.get("points"))
            if meta["chunked"] is None:  # a base written before the flag: asked once, here
                index.chunked = index.has_chunks()
            yield index
            index.optimize()
            meta["points"] = index.count()
            meta["chunked"] = index.chunked
            meta[TENANT_SPACES] = index.tenant_spaces  # with the tenants this write added
            index.close()
            if hot is not None:
                to_hot(path, hot)
            if clone is not None:
                _check_linked_untouched(clone, base)
            write_manifest(path)
            meta[MANIFEST_FLAG] = True
            durable_write(path / "meta.json", json.dumps(meta, indent=1))
            durable_write(self.root / "LIVE", str(gen))
        except BaseException:
            with contextlib.suppress(Exception):
                index.close()
            shutil.rmtree(path, ignore_errors=True)
            raise
        self.prune(self.keep)

    def _optimizers(self, dimension: int) -> Any:
        """The optimizer settings of a fresh generation (a copy keeps its base's)."""
        import qdrant_edge as q

        if self.indexing_threshold_kb is None and self.segment_points is None:
            return None
        # The engine's cap on a merged segment, in KB of vectors: `segment_points` dense
        # vectors' worth, so two sealed full segments are never merged into one again.
        max_kb = (
            None if self.segment_points is None else self.segment_points * dimension * 4 // 1024
        )
        return q.EdgeOptimizersConfig(
            indexing_threshold=self.indexing_threshold_kb, max_segment_size=max_kb
        )

    def _sparse_layout(self, base_meta: dict[str, Any] | None) -> dict[str, Any]:
        """The sparse vectors of a new generation, as meta fields: a copy keeps its base's
        layout (sparse vectors, and tenant term spaces, only if the base had them), a fresh
        one gets this store's encoder and a term space per tenant."""
        if base_meta is not None:
            return {k: base_meta.get(k) for k in ("sparse_encoder", TENANT_SPACES)}
        if self.lexical is None:
            return {"sparse_encoder": None, TENANT_SPACES: None}
        return {"sparse_encoder": self.lexical.version, TENANT_SPACES: {}}

    def _drop(self, generation: int) -> None:
        shutil.rmtree(self._gen_dir(generation), ignore_errors=True)
