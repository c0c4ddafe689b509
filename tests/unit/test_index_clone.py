"""The embedded store's writer clones the live generation by sharing its sealed files.

A small sync must cost what it changes, not the index, and sharing files between
generations must never let a writer reach into the generation readers have open.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from semflow.errors import IndexError_
from semflow.index.qdrant_edge import EdgeStore, _sealed

DIM = 64
MV = "test-model@000000000000"
# 10 KB of vectors (40 points at 64-d) seal a segment: the optimizer then writes an immutable
# HNSW segment, as it does for any real index past the engine's default threshold.
THRESHOLD_KB = 10


def _points(n: int, start: int = 0, tag: str = "v1"):
    rng = np.random.default_rng(start + (hash(tag) % 1000))
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(start, start + n)]
    payloads = [
        {"tenant": "t1", "type": "a", "source": "s", "doc_id": str(i), "labels": ["x"],
         "text": f"{tag} {i} " + "lorem ipsum " * 20}
        for i in range(start, start + n)
    ]  # fmt: skip
    return ids, vecs, payloads


def _built(root: Path, n: int) -> EdgeStore:
    store = EdgeStore(root, lock_timeout_s=0.5, keep=5, indexing_threshold_kb=THRESHOLD_KB)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(n))
    return store


def _hashes(gen_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(gen_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(gen_dir.rglob("*"))
        if p.is_file()
    }


def _own_bytes(gen_dir: Path) -> int:
    """Disk blocks of a generation that no other generation shares (what writing it cost)."""
    return sum(
        p.stat().st_blocks * 512
        for p in gen_dir.rglob("*")
        if p.is_file() and p.stat().st_nlink == 1
    )


def _answers(idx, probe_ids, probe_vecs):
    """What a reader sees: count, stored payloads, and top-5 per probe vector."""
    return (
        idx.count(),
        sorted((h.id, h.payload["text"]) for h in idx.retrieve(probe_ids)),
        [[h.id for h in idx.search(v, "t1", 5)] for v in probe_vecs],
    )


def _change(w) -> None:
    """A small sync: 10 new points, 5 rewritten and 5 deleted in the sealed segment."""
    w.upsert(*_points(10, start=10**6))
    w.upsert(*_points(5, start=7, tag="v2"))
    w.delete(_points(5, start=100)[0])


def test_small_sync_writes_what_changed_not_the_index(tmp_path):
    """Bytes a 20-point sync adds to disk barely grow with the index: 4x the points cost
    under a tenth of what they added to the index (the old full copy: all of it)."""
    own, index_bytes, stores = {}, {}, {}
    for n in (1000, 4000):
        store = stores[n] = _built(tmp_path / str(n), n)
        with store.writer(MV, DIM) as w:
            _change(w)
        assert store.live_generation() == 2
        own[n] = _own_bytes(store._gen_dir(2))
        index_bytes[n] = sum(p.stat().st_blocks * 512 for p in store._gen_dir(1).rglob("*"))
        with store.open_live() as idx:
            assert idx.count() == n + 10 - 5
    assert own[4000] - own[1000] < 0.1 * (index_bytes[4000] - index_bytes[1000])
    assert own[4000] < 0.5 * index_bytes[4000]
    # what the writer records: it shared more than it copied
    clone = stores[4000].meta(2)["clone"]
    assert clone["linked_files"] > 0 and clone["linked_bytes"] > 10 * clone["copied_bytes"]


def test_readers_of_the_live_generation_never_see_the_sync(tmp_path):
    """Rewrites and deletes of points in shared sealed files reach only the new generation:
    the open reader's answers and every byte of its generation stay as they were."""
    store = _built(tmp_path / "idx", 1000)
    probe_ids, probe_vecs, _ = _points(12, start=0)
    reader = store.open_live()
    seen = _answers(reader, probe_ids, probe_vecs)
    # after the open: loading a shard rewrites its edge_config.json (by rename, a new file)
    before = _hashes(store._gen_dir(1))
    with store.writer(MV, DIM) as w:
        _change(w)
        w.flush()
        assert _answers(reader, probe_ids, probe_vecs) == seen  # mid-sync
    assert store.meta(2)["clone"]["linked_files"] > 0
    assert _answers(reader, probe_ids, probe_vecs) == seen  # after the publish
    assert _hashes(store._gen_dir(1)) == before
    reader.close()
    with store.open_live() as new:
        texts = {h.id: h.payload["text"] for h in new.retrieve(probe_ids)}
        assert texts[probe_ids[7]].startswith("v2 ") and texts[probe_ids[6]].startswith("v1 ")
        assert new.retrieve(_points(5, start=100)[0]) == []
    with store.open_generation(1) as old:  # opened afresh from disk: still the old data
        assert _answers(old, probe_ids, probe_vecs) == seen


def test_writer_killed_mid_sync_leaves_the_live_generation_intact(tmp_path):
    """A writer SIGKILLed after changing a clone that shares the live generation's files:
    LIVE and every byte of the live generation are unchanged; the next writer cleans up."""
    root = tmp_path / "idx"
    store = _built(root, 1000)
    probe_ids, probe_vecs, _ = _points(12, start=0)
    with store.open_live() as idx:
        seen = _answers(idx, probe_ids, probe_vecs)
    before = _hashes(store._gen_dir(1))
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_index_clone import _change, MV, DIM, THRESHOLD_KB
        from semflow.index.qdrant_edge import EdgeStore
        store = EdgeStore({str(root)!r}, indexing_threshold_kb=THRESHOLD_KB)
        with store.writer(MV, DIM) as w:
            _change(w)
            w.flush()
            print("written", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        # the half-written clone shares the live generation's sealed files
        linked = [p for p in store._gen_dir(2).rglob("*") if p.is_file() and p.stat().st_nlink > 1]
        assert linked
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert store.live_generation() == 1 and store.generations() == [1]
    assert _hashes(store._gen_dir(1)) == before
    with store.open_live() as idx:
        assert _answers(idx, probe_ids, probe_vecs) == seen
    with store.writer(MV, DIM) as w:
        _change(w)
    assert store.live_generation() == 2
    with store.open_live() as idx:
        assert idx.count() == 1000 + 10 - 5


def test_a_write_into_a_shared_file_is_never_published(tmp_path):
    """Sharing rests on the engine never writing a sealed file again; if one changes under
    the writer (another engine version), the writer refuses to publish and says why."""
    store = _built(tmp_path / "idx", 1000)
    with pytest.raises(IndexError_, match="shared with generation 1"), store.writer(MV, DIM) as w:
        _change(w)
        shared = next(
            p for p in store._gen_dir(2).rglob("*") if p.is_file() and p.stat().st_nlink > 1
        )
        os.utime(shared, ns=(0, shared.stat().st_mtime_ns + 10**9))
    assert store.live_generation() == 1 and store.generations() == [1]
    assert json.loads((store._gen_dir(1) / "meta.json").read_text())["points"] == 1000


def test_a_clone_with_sparse_vectors_keeps_both_generations_answering(tmp_path):
    """Generations with lexical vectors clone the same way: the sparse index of the live
    generation is untouched by the sync, and the new one finds the new text lexically."""
    from semflow.config import get_settings
    from semflow.sparse import lexical_encoder

    lexical = lexical_encoder(get_settings().base_embedder_dir)
    store = EdgeStore(
        tmp_path / "idx", lock_timeout_s=0.5, keep=5, indexing_threshold_kb=THRESHOLD_KB,
        lexical=lexical,
    )  # fmt: skip
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(1000))
    before = _hashes(store._gen_dir(1))
    ids, vecs, payloads = _points(1, start=10**6)
    payloads[0]["text"] = "Zorvath quarterly statement"
    with store.writer(MV, DIM) as w:
        w.upsert(ids, vecs, payloads)
    assert store.meta(2)["clone"]["linked_files"] > 0
    assert _hashes(store._gen_dir(1)) == before
    with store.open_live() as new:
        hits = new.search(None, "t1", 3, mode="sparse", text="zorvath statement")
        assert [h.id for h in hits][:1] == ids
    with store.open_generation(1) as old:
        assert old.search(None, "t1", 3, mode="sparse", text="zorvath") == []


def test_sealed_sparse_vectors_are_shared_and_never_written(tmp_path):
    """Engine level, with the sparse vectors a hybrid index adds: the clone shares the
    sealed segment's inverted index and sparse pages, and changing the clone (rewrites,
    deletes, new points, the optimizer) leaves every file of the source as it was."""
    import uuid

    import qdrant_edge as q

    from semflow.index.qdrant_edge import clone_generation

    src, dst = tmp_path / "src", tmp_path / "dst"
    cfg = q.EdgeConfig(
        vectors=q.EdgeVectorParams(size=DIM, distance=q.Distance.Cosine),
        sparse_vectors={"sparse": q.EdgeSparseVectorParams()},
        optimizers=q.EdgeOptimizersConfig(indexing_threshold=THRESHOLD_KB),
        wal_enabled=False,
    )
    rng = np.random.default_rng(0)

    def point(i: int) -> q.Point:
        idx = sorted({int(x) for x in rng.integers(0, 5000, 12)})
        vec = {"": rng.normal(size=DIM).tolist(), "sparse": q.SparseVector(idx, [1.0] * len(idx))}
        return q.Point(id=str(uuid.UUID(int=i + 1)), vector=vec, payload={"doc_id": str(i)})

    shard = q.EdgeShard.create(str(src), cfg)
    shard.update(q.UpdateOperation.upsert_points([point(i) for i in range(1000)]))
    shard.optimize()
    shard.close()
    q.EdgeShard.load(str(src)).close()  # a reader's open rewrites edge_config.json
    before = _hashes(src)
    stats = clone_generation(src, dst)
    linked = {Path(p).relative_to(dst).as_posix() for p, *_ in stats.linked}
    assert any(p.endswith("inverted_index.dat") for p in linked)
    assert any("vector_storage-sparse/store/page_" in p for p in linked)
    shard = q.EdgeShard.load(str(dst))
    shard.update(q.UpdateOperation.upsert_points([point(i) for i in range(0, 300, 10)]))
    shard.update(q.UpdateOperation.upsert_points([point(10**6 + i) for i in range(30)]))
    shard.update(
        q.UpdateOperation.delete_points([str(uuid.UUID(int=i + 2)) for i in range(0, 300, 7)])
    )
    shard.optimize()
    shard.close()
    assert _hashes(src) == before


class _Embedder:
    """Random unit vectors under a fixed version: the sync path without the model."""

    version, dimension = "fake@000000000000", DIM

    def encode(self, texts):
        v = np.random.default_rng(len(texts)).normal(size=(len(texts), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_small_sync_never_opens_the_live_generation(tmp_path, monkeypatch):
    """Opening a generation loads all of it (vectors, graph, payload indexes): an incremental
    sync reads the live embedder from its metadata and writes through its clone only."""
    import pandas as pd

    from semflow.app import Services
    from semflow.config import load_settings
    from semflow.sources import FieldMapping, FileSource
    from semflow.sync import run_sync

    path = tmp_path / "docs.csv"
    rows = [{"id": i, "text": f"document number {i}"} for i in range(6)]
    pd.DataFrame(rows).to_csv(path, index=False)
    src = FileSource("docs", path, FieldMapping(id="id", text="text", updated_at=None))
    svc = Services.from_settings(load_settings(home=tmp_path / "home"), embedder=_Embedder())
    assert run_sync(src, svc).generation == 1
    rows += [{"id": i, "text": f"a new document {i}"} for i in range(6, 8)]
    pd.DataFrame(rows).to_csv(path, index=False)
    opened: list[int] = []
    real_open = svc.store.open_generation
    monkeypatch.setattr(svc.store, "open_generation", lambda g: opened.append(g) or real_open(g))
    res = run_sync(src, svc)
    assert (res.generation, res.counts["indexed"], res.counts["points"]) == (2, 2, 8)
    assert opened == []


def test_only_the_tenant_index_is_loaded_when_a_generation_opens(tmp_path):
    """Every segment of a fresh generation and of its copy keeps the tenant index on the
    heap; the other payload indexes, the payloads and the id tracker are on the cold tier
    (memory-mapped, read on first touch), and filters on them still answer."""
    store = _built(tmp_path / "idx", 400)
    with store.writer(MV, DIM) as w:
        _change(w)
    for gen in (1, 2):
        gen_dir = store._gen_dir(gen)
        cfg = json.loads((gen_dir / "edge_config.json").read_text())
        assert (cfg["payload_memory"], cfg["id_tracker_memory"]) == ("cold", "cold")
        segments = list((gen_dir / "segments").iterdir())
        sealed = [seg for seg in segments if _sealed(seg)]
        assert sealed and len(segments) > len(sealed)  # a sealed segment and an appendable one
        if gen == 1:  # the cold id tracker's mappings of a sealed segment: shared with the copy
            assert all((seg / "id_tracker.i2e").stat().st_nlink == 2 for seg in sealed)
        for seg in segments:
            fields = json.loads((seg / "payload_index" / "config.json").read_text())
            fields = fields["indexed_fields"]
            assert fields.pop("tenant") == "keyword", seg
            assert {f: v["memory"] for f, v in fields.items()} == dict.fromkeys(
                ("type", "source", "doc_id", "labels"), "cold"
            ), seg
    with store.open_live() as idx:
        assert [h.id for h in idx.retrieve(_points(1, start=7)[0])] == _points(1, start=7)[0]
        v = _points(1, start=7, tag="v2")[1][0]
        assert idx.search(v, "t1", 1, filters={"doc_id": "7"})[0].payload["text"].startswith("v2")
        assert idx.search(v, "t2", 5) == []


def test_a_reader_keeps_answering_after_its_generation_is_pruned(tmp_path):
    """A server holds a generation open while later writes publish newer ones and prune it
    from disk: the files it mapped stay readable until it closes it."""
    store = EdgeStore(
        tmp_path / "idx", lock_timeout_s=0.5, keep=2, indexing_threshold_kb=THRESHOLD_KB
    )
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(1000))
    probe_ids, probe_vecs, _ = _points(12, start=0)
    reader = store.open_live()
    try:
        seen = _answers(reader, probe_ids, probe_vecs)
        for k in range(3):
            with store.writer(MV, DIM, fresh=True) as w:
                w.upsert(*_points(50, start=10**6 * (k + 1)))
        assert store.generations() == [3, 4] and not store._gen_dir(1).exists()
        assert _answers(reader, probe_ids, probe_vecs) == seen
    finally:
        reader.close()
