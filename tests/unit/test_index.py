"""Both index backends through one interface: generations, filters, readers, the writer lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from semflow.errors import IndexError_, IndexLockedError
from semflow.index import FilterError
from semflow.index.qdrant_edge import EdgeStore
from semflow.index.qdrant_server import ServerStore

DIM = 8
MV = "test-model@000000000000"


def _points(n: int, tenant: str = "t1", start: int = 0):
    rng = np.random.default_rng(start)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(start, start + n)]
    payloads = [
        {
            "tenant": tenant,
            "type": "a" if i % 2 else "b",
            "source": "s",
            "doc_id": str(i),
            "labels": [f"l{i % 3}"],
            "metadata": {"lang": "en" if i % 2 else "de"},
        }
        for i in range(start, start + n)
    ]
    return ids, vecs, payloads


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    if request.param == "edge":
        return EdgeStore(tmp_path / "idx", lock_timeout_s=0.5)
    return ServerStore(":memory:", f"c{time.monotonic_ns()}")


def test_generations_publish_atomically_and_readers_keep_theirs(store):
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(10))
    assert store.live_generation() == 1
    reader = store.open_live()
    assert reader.count() == 10

    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(4, start=100))
        # the old generation still answers while the new one is being built
        assert reader.count() == 10
        assert store.live_generation() == 1
    assert store.live_generation() == 2
    assert reader.count() == 10 and reader.generation == 1
    with store.open_live() as new:
        assert new.count() == 4 and new.embedder_version == MV
    reader.close()


def test_failed_writer_publishes_nothing(store):
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(5))
    with pytest.raises(RuntimeError), store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(3, start=50))
        raise RuntimeError("boom")
    assert store.live_generation() == 1
    with store.open_live() as idx:
        assert idx.count() == 5
    assert store.generations() == [1]


def test_search_is_tenant_scoped_and_filters_cannot_widen(store):
    with store.writer(MV, DIM) as w:
        ids, vecs, pls = _points(20, "t1")
        w.upsert(ids, vecs, pls)
        w.upsert(*_points(20, "t2", start=1000))
    with store.open_live() as idx:
        hits = idx.search(vecs[0], "t1", top_k=50)
        assert len(hits) == 20 and {h.payload["tenant"] for h in hits} == {"t1"}
        assert hits[0].id == ids[0] and hits[0].score > 0.99
        only_a = idx.search(vecs[0], "t1", top_k=50, filters={"type": "a"})
        assert len(only_a) == 10 and all(h.payload["type"] == "a" for h in only_a)
        de = idx.search(vecs[0], "t1", top_k=50, filters={"metadata.lang": "de"})
        assert len(de) == 10
        both = idx.search(vecs[0], "t1", top_k=50, filters={"labels": ["l0", "l1"]})
        assert len(both) == 14
        assert idx.search(vecs[0], "nobody", top_k=5) == []
        with pytest.raises(FilterError, match="tenant"):
            idx.search(vecs[0], "t1", filters={"tenant": "t2"})
        with pytest.raises(FilterError, match="unknown filter"):
            idx.search(vecs[0], "t1", filters={"$or": "x"})


def test_warm_searches_stored_points_in_their_own_tenant(store):
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(12, "t1"))
        w.upsert(*_points(8, "t2", start=1000))
    with store.open_live() as idx:
        real_search, seen = idx.search, []

        def spy(vector, tenant, top_k=10, **kw):
            hits = real_search(vector, tenant, top_k, **kw)
            seen.append((tenant, hits[0].payload["tenant"], hits[0].score))
            return hits

        idx.search = spy
        assert idx.warm(0) == 0 and seen == []
        assert idx.warm(5) == 5 and len(seen) == 5
        assert idx.warm(100) == 20 and len(seen) == 25  # capped at the points stored
        # each warm-up query is a stored vector searched in its own tenant: it finds itself
        assert {t for t, _, _ in seen} == {"t1", "t2"}
        assert all(t == hit_t and score > 0.99 for t, hit_t, score in seen)


def test_embedder_version_mismatch_requires_fresh_build(store):
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(2))
    with pytest.raises(IndexError_, match="full refresh"), store.writer("other@1", DIM):
        pass


def test_prune_keeps_live_and_newest(tmp_path):
    store = EdgeStore(tmp_path / "idx", keep=10)
    for _ in range(4):
        with store.writer(MV, DIM, fresh=True) as w:
            w.upsert(*_points(1))
    assert store.prune(2) == [1, 2]
    assert store.generations() == [3, 4] and store.live_generation() == 4


def test_second_writer_gets_clear_error_and_no_corruption(tmp_path):
    root = tmp_path / "idx"
    store = EdgeStore(root, lock_timeout_s=0.5)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(7))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from semflow.index.qdrant_edge import EdgeStore
            with EdgeStore({str(root)!r}).writer({MV!r}, {DIM}) as w:
                print("holding", flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with (
            pytest.raises(IndexLockedError, match="being written by another process"),
            store.writer(MV, DIM),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    # The killed writer's half-built generation is never published; the next writer cleans it.
    assert store.live_generation() == 1
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(1, start=500))
    with store.open_live() as idx:
        assert idx.count() == 8
    assert store.generations() == [1, 2]


def test_published_generation_is_read_only(tmp_path):
    store = EdgeStore(tmp_path / "idx")
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(1))
    with store.open_live() as idx, pytest.raises(IndexError_, match="read-only"):
        idx.delete([_points(1)[0][0]])


@pytest.mark.parametrize(
    ("filters", "says"),
    [
        ({"labels": ["a", 1]}, "mixes value types"),
        ({"doc_id": 10**30}, "64-bit integer range"),
        ({"doc_id": [1, -(10**19)]}, "64-bit integer range"),
        ({"labels": [True, False]}, "list of booleans"),
        ({"labels": [["nested"]]}, "string/int/bool"),
        ({"labels": []}, "string/int/bool"),
        ({"labels": [1.5]}, "string/int/bool"),
        ({"labels": ["x" * 2000]}, "longer than"),
        ({"labels": [str(i) for i in range(2000)]}, "the limit is"),
    ],
)
def test_filters_qdrant_cannot_match_are_filter_errors(store, filters, says):
    """Each of these reached the engine before and failed there (a 500 over HTTP)."""
    with store.writer(MV, DIM) as w:
        ids, vecs, pls = _points(4)
        w.upsert(ids, vecs, pls)
    with store.open_live() as idx, pytest.raises(FilterError, match=says):
        idx.search(vecs[0], "t1", filters=filters)


def test_largest_int64_filter_is_accepted(store):
    with store.writer(MV, DIM) as w:
        ids, vecs, pls = _points(4)
        w.upsert(ids, vecs, pls)
    with store.open_live() as idx:
        assert idx.search(vecs[0], "t1", filters={"doc_id": 2**63 - 1}) == []
        assert len(idx.search(vecs[0], "t1", filters={"labels": ["l0", "l1"]})) == 3


def test_a_generation_written_before_the_rename_keeps_its_embedder_version(tmp_path):
    """meta.json of older generations says `model_version`: still read, still guarded."""
    import json

    store = EdgeStore(tmp_path / "idx", lock_timeout_s=0.5)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(3))
    meta_path = tmp_path / "idx" / "gen-000001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_version"] = meta.pop("embedder_version")
    meta_path.write_text(json.dumps(meta))
    fresh = EdgeStore(tmp_path / "idx", lock_timeout_s=0.5)
    assert fresh.live_embedder_version() == MV
    with fresh.open_live() as idx:
        assert idx.embedder_version == MV
    with pytest.raises(IndexError_, match="full refresh"), fresh.writer("other@1", DIM):
        pass


def test_search_returns_each_document_once_with_its_best_chunk(store):
    """30 chunks of one document crowd the nearest points: search still returns top_k
    documents (edge: over-fetching rounds; server: Qdrant's group-by)."""
    from semflow.documents import PARENT_FIELD

    rng = np.random.default_rng(7)
    q = rng.normal(size=DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    near = q + rng.normal(scale=0.01, size=(30, DIM)).astype(np.float32)
    far = rng.normal(size=(5, DIM)).astype(np.float32)
    vecs = np.vstack([near, far])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(35)]
    payloads = [
        {"tenant": "t1", "source": "s", "doc_id": "long", "chunk_no": i, PARENT_FIELD: ids[0]}
        for i in range(30)
    ] + [{"tenant": "t1", "source": "s", "doc_id": f"d{i}"} for i in range(5)]
    with store.writer(MV, DIM) as w:
        w.upsert(ids, vecs, payloads)
    best = int(np.argmax(vecs[:30] @ q))
    with store.open_live() as idx:
        hits = idx.search(q, "t1", top_k=3)
        assert hits[0].payload["doc_id"] == "long"
        assert hits[0].id == ids[best]  # the document's best chunk
        assert len({h.payload["doc_id"] for h in hits}) == 3
        assert len(idx.search(q, "t1", top_k=10)) == 6  # every document, once


def test_a_server_collection_from_before_chunking_still_returns_documents_once():
    """Its metadata names no group-by field and its points have no parent: search groups by
    over-fetching, also once a sync adds a chunked document in place."""
    from qdrant_client import models as m

    from semflow.documents import PARENT_FIELD

    store = ServerStore(":memory:", f"old{time.monotonic_ns()}")
    coll = f"{store.name}_g1"
    store.client.create_collection(
        coll,
        vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE),
        metadata={"embedder_version": MV, "generation": 1},
    )
    store._switch(1)
    ids, vecs, payloads = _points(5)
    store.client.upsert(coll, m.Batch(ids=ids, vectors=vecs.tolist(), payloads=payloads))
    chunk_ids, chunk_vecs, _ = _points(3, start=100)
    parent = {"tenant": "t1", "source": "s", "doc_id": "long", PARENT_FIELD: chunk_ids[0]}
    with store.writer(MV, DIM) as w:
        assert w.generation == 1  # written in place
        w.upsert(chunk_ids, chunk_vecs, [{**parent, "chunk_no": i} for i in range(3)])
    with store.open_live() as idx:
        hits = idx.search(chunk_vecs[1], "t1", top_k=10)
    assert sorted(h.payload["doc_id"] for h in hits) == ["0", "1", "2", "3", "4", "long"]
    assert hits[0].id == chunk_ids[1]


def test_edge_search_overfetches_only_once_a_document_has_chunks(tmp_path):
    """Generations that hold one point per document fetch top_k points once (no grouping
    rounds); a chunked document, once upserted, makes this and every later copy group again,
    until a fresh build without chunks."""
    from semflow.documents import PARENT_FIELD

    store = EdgeStore(tmp_path / "idx")

    def limits(idx) -> list[int]:
        asked: list[int] = []
        real = idx._search
        idx._search = lambda query: asked.append(query.top_k) or real(query)
        hits = idx.search(vecs[0], "t1", top_k=3)
        assert len({h.payload["doc_id"] for h in hits}) == 3
        return asked

    ids, vecs, payloads = _points(10)
    with store.writer(MV, DIM) as w:
        w.upsert(ids, vecs, payloads)
    with store.open_live() as idx:
        assert not idx.chunked
        assert limits(idx) == [3]

    chunk_ids, _, _ = _points(5, start=100)
    parent = {"tenant": "t1", "source": "s", "doc_id": "long", PARENT_FIELD: chunk_ids[0]}
    with store.writer(MV, DIM) as w:  # the chunks lie next to the query: they crowd its top
        w.upsert(
            chunk_ids, np.repeat(vecs[:1], 5, axis=0), [{**parent, "chunk_no": i} for i in range(5)]
        )
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(1, start=200))
    with store.open_live() as idx:
        assert idx.chunked and store.meta(idx.generation)["chunked"]
        assert limits(idx)[0] > 3

    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(ids, vecs, payloads)
    with store.open_live() as idx:
        assert not idx.chunked


def test_a_generation_from_before_the_chunked_flag_groups_until_a_writer_asks(tmp_path):
    """Its metadata does not say: readers group, and the next writer asks the engine once."""
    import json

    from semflow.documents import PARENT_FIELD

    store = EdgeStore(tmp_path / "idx")
    ids, vecs, payloads = _points(10)
    payloads[3] = {**payloads[3], "chunk_no": 1, PARENT_FIELD: ids[2]}
    for chunk in (False, True):
        with store.writer(MV, DIM, fresh=True) as w:
            w.upsert(ids, vecs, payloads if chunk else _points(10)[2])
        meta_path = store._gen_dir(store.live_generation()) / "meta.json"
        meta = json.loads(meta_path.read_text())
        assert meta.pop("chunked") is chunk
        meta_path.write_text(json.dumps(meta))
        with store.open_live() as idx:
            assert idx.chunked
        with store.writer(MV, DIM) as w:
            w.upsert(*_points(1, start=50))
        assert store.meta(store.live_generation())["chunked"] is chunk
