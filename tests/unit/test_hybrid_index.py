"""Sparse vectors beside the dense ones, on both backends: dense, sparse and hybrid search,
and generations built before them (dense only until a full refresh)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from semflow.config import get_settings
from semflow.errors import IndexError_, SearchModeError
from semflow.index.qdrant_edge import EdgeStore
from semflow.index.qdrant_server import ServerStore
from semflow.sparse import LexicalEncoder, lexical_encoder

DIM = 8
MV = "test-model@000000000000"
TEXTS = [
    "I lost my card yesterday",
    "How do I reset my password",
    "My payment to Quorbel failed",
    "Where is my transfer",
    "Can I get a refund for this purchase",
    "Exchange rate for euros",
]


@pytest.fixture(scope="module")
def lexical() -> LexicalEncoder:
    enc = lexical_encoder(get_settings().base_embedder_dir)
    assert enc is not None
    return enc


class OtherEncoder(LexicalEncoder):
    """The same tokenizer posing as another encoder version (other BM25 constants)."""

    @property
    def version(self) -> str:
        return "wordpiece-bm25@000000000000"


@pytest.fixture(params=["edge", "server"])
def stores(request, tmp_path):
    """`make(lexical)`: a store of one shared collection that encodes with `lexical`."""
    if request.param == "edge":
        return lambda lexical: EdgeStore(tmp_path / "idx", lock_timeout_s=0.5, lexical=lexical)
    from qdrant_client import QdrantClient

    client, name = QdrantClient(location=":memory:"), f"c{time.monotonic_ns()}"
    return lambda lexical: ServerStore(":memory:", name, client=client, lexical=lexical)


def _points(texts, tenant="t1", start=0):
    rng = np.random.default_rng(start)
    vecs = rng.normal(size=(len(texts), DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(start, start + len(texts))]
    payloads = [
        {"tenant": tenant, "doc_id": str(start + i), "type": "a" if i % 2 else "b", "text": t}
        for i, t in enumerate(texts)
    ]
    return ids, vecs, payloads


def _docs(hits):
    return [h.payload["doc_id"] for h in hits]


def test_sparse_and_hybrid_search_find_the_keyword_dense_misses(stores, lexical):
    store = stores(lexical)
    ids, vecs, pls = _points(TEXTS)
    with store.writer(MV, DIM) as w:
        w.upsert(ids, vecs, pls)
        w.upsert(*_points(["a Quorbel refund"], tenant="t2", start=100))
    with store.open_live() as idx:
        assert idx.has_sparse and idx.sparse_encoder == lexical.version
        # what a server runs before it swaps a generation in: the dense vectors come back
        assert np.allclose(idx.retrieve(ids[:1], with_vectors=True)[0].payload["_vector"], vecs[0])
        assert idx.warm(3) == 3
        # the random dense vectors know nothing of the words: nearest to vecs[0] is doc 0
        assert _docs(idx.search(vecs[0], "t1", 1, mode="dense", text="Quorbel"))[0] == "0"
        # only doc 2 of t1 has the name; t2's document never shows (the tenant is ANDed in)
        assert _docs(idx.search(None, "t1", 5, mode="sparse", text="quorbel?")) == ["2"]
        both = _docs(idx.search(vecs[0], "t1", 2, mode="hybrid", text="Quorbel"))
        assert sorted(both) == ["0", "2"]
        assert len(idx.search(vecs[0], "t1", 6, mode="hybrid", text="Quorbel")) == 6
        # user filters apply to the sparse candidates as well
        assert idx.search(None, "t1", 5, {"type": "a"}, mode="sparse", text="Quorbel") == []
        assert _docs(idx.search(vecs[0], "t1", 5, {"type": "b"}, mode="hybrid", text="Quorbel"))
        for mode in ("sparse", "hybrid"):
            with pytest.raises(SearchModeError, match="only mode 'dense'"):
                idx.search(vecs[0], "t1", 5, score_threshold=0.5, mode=mode, text="Quorbel")
        # a threshold without a mode means dense
        assert idx.search_mode(None, "hybrid", 0.5) == "dense"
        assert idx.search_mode(None, "hybrid") == "hybrid"
        with pytest.raises(SearchModeError, match="unknown search mode"):
            idx.search(vecs[0], "t1", 5, mode="fuzzy", text="Quorbel")


def test_incremental_writes_keep_sparse_vectors(stores, lexical):
    store = stores(lexical)
    ids, vecs, pls = _points(TEXTS)
    with store.writer(MV, DIM) as w:
        w.upsert(ids, vecs, pls)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["charge from Zanquovor"], start=50))
        w.delete([ids[2]])
    with store.open_live() as idx:
        assert idx.has_sparse
        assert _docs(idx.search(None, "t1", 5, mode="sparse", text="Zanquovor")) == ["50"]
        assert idx.search(None, "t1", 5, mode="sparse", text="Quorbel") == []


def test_a_generation_without_sparse_vectors_answers_dense_until_a_full_refresh(stores, lexical):
    ids, vecs, pls = _points(TEXTS)
    with stores(None).writer(MV, DIM) as w:  # built before hybrid search
        w.upsert(ids, vecs, pls)
    store = stores(lexical)
    with store.open_live() as idx:
        assert not idx.has_sparse
        assert _docs(idx.search(vecs[0], "t1", 1))[0] == "0"
        for mode in ("sparse", "hybrid"):
            with pytest.raises(SearchModeError, match=r"no sparse vectors.*full refresh"):
                idx.search(vecs[0], "t1", 5, mode=mode, text="Quorbel")
        # a request naming no mode gets dense; one naming a mode gets it (or the error above)
        assert idx.search_mode(None, "hybrid") == "dense"
        assert idx.search_mode("sparse", "dense") == "sparse"
    # an incremental sync keeps the dense-only layout
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["charge from Zanquovor"], start=50))
    with store.open_live() as idx:
        assert not idx.has_sparse and idx.count() == len(TEXTS) + 1
    # a full refresh brings the sparse vectors
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(ids, vecs, pls)
    with store.open_live() as idx:
        assert idx.has_sparse and idx.search_mode(None, "hybrid") == "hybrid"
        assert _docs(idx.search(None, "t1", 5, mode="sparse", text="Quorbel")) == ["2"]


def test_sparse_vectors_of_another_encoder_are_refused(stores, lexical):
    ids, vecs, pls = _points(TEXTS)
    with stores(lexical).writer(MV, DIM) as w:
        w.upsert(ids, vecs, pls)
    other = stores(OtherEncoder(lexical.tokenizer_file.parent))
    with other.open_live() as idx:
        assert _docs(idx.search(vecs[0], "t1", 1))[0] == "0"  # dense still answers
        with pytest.raises(IndexError_, match="full refresh"):
            idx.search(vecs[0], "t1", 5, mode="hybrid", text="Quorbel")
    with pytest.raises(IndexError_, match="full refresh"), other.writer(MV, DIM) as w:
        w.upsert(*_points(["charge from Zanquovor"], start=50))
