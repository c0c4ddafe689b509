"""Sparse vectors beside the dense ones, on both backends: dense, sparse and hybrid search,
each tenant's terms in a space of its own, and generations built before them (dense only, or
one shared term space, until a full refresh)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from semflow.errors import IndexError_, SearchModeError
from semflow.index.qdrant_edge import EdgeStore
from semflow.index.qdrant_server import ServerStore
from semflow.sparse import LexicalEncoder

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


class OtherEncoder(LexicalEncoder):
    """The same tokenizer posing as another encoder version (other BM25 constants)."""

    @property
    def version(self) -> str:
        return "wordpiece-bm25@000000000000"


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


def test_warm_runs_hybrid_searches_of_the_stored_texts(stores, lexical):
    """The service answers in hybrid by default: its warm-up reads the sparse index too, each
    stored point's text and vector finding that point first, in its own tenant."""
    store = stores(lexical)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(TEXTS))
        w.upsert(*_points(["a Quorbel refund"], tenant="t2", start=100))
    with store.open_live() as idx:
        real_search, seen = idx.search, []

        def spy(vector, tenant, top_k=10, **kw):
            hits = real_search(vector, tenant, top_k, **kw)
            seen.append((kw.get("mode"), kw.get("text"), tenant, hits[0].payload))
            return hits

        idx.search = spy
        assert idx.warm(100) == len(TEXTS) + 1
    assert {mode for mode, *_ in seen} == {"hybrid"}
    assert {t for _, t, _, _ in seen} == {*TEXTS, "a Quorbel refund"}
    assert all(p["text"] == text and p["tenant"] == tenant for _, text, tenant, p in seen)


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
        # a service can still warm it (dense) and swap it in, to answer dense searches
        assert idx.warm(3) == 3
    with pytest.raises(IndexError_, match="full refresh"), other.writer(MV, DIM) as w:
        w.upsert(*_points(["charge from Zanquovor"], start=50))


def test_a_generation_from_before_stop_words_keeps_them_until_a_full_refresh(stores, lexical):
    """An index whose sparse vectors kept stop words (built before they were dropped) is
    searched and extended with that encoder, so its vectors and queries still agree."""
    before = LexicalEncoder(lexical.tokenizer_file.parent, stopwords=False)
    with stores(before).writer(MV, DIM) as w:
        w.upsert(*_points(TEXTS))
    store = stores(lexical)  # this release's process
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["where is the charge from Zanquovor"], start=50))
    with store.open_live() as idx:
        assert idx.sparse_encoder == before.version and idx.keeps_stopwords
        # the stop words are terms of this generation, in queries as in documents
        assert set(_docs(idx.search(None, "t1", 10, mode="sparse", text="where is"))) == {
            "3",
            "50",
        }
        assert _docs(idx.search(None, "t1", 1, mode="sparse", text="Zanquovor")) == ["50"]
        assert _docs(idx.search(None, "t1", 1, mode="sparse", text="Quorbel")) == ["2"]
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(TEXTS))
    with store.open_live() as idx:
        assert idx.sparse_encoder == lexical.version and not idx.keeps_stopwords
        assert idx.search(None, "t1", 10, mode="sparse", text="where is") == []
        assert _docs(idx.search(None, "t1", 1, mode="sparse", text="Quorbel")) == ["2"]


def _sparse_scores(store, tenant, text):
    with store.open_live() as idx:
        hits = idx.search(None, tenant, 10, mode="sparse", text=text)
    return {h.payload["doc_id"]: round(h.score, 5) for h in hits}


def test_another_tenants_words_never_move_a_tenants_sparse_scores(stores, lexical):
    """A hostile tenant learns nothing of another's words from its own BM25 scores: the
    document frequencies of a tenant's search count its own documents only (the index's
    point count is all that the tenants share)."""
    store = stores(lexical)
    probe = "payment Quorbel refund"
    seen = []
    for victim_text in ("weather in Lisbon", "Quorbel payment refund"):
        with store.writer(MV, DIM, fresh=True) as w:
            w.upsert(*_points(TEXTS, tenant="attacker"))
            w.upsert(*_points([f"{victim_text} {i}" for i in range(30)], "victim", start=50))
        seen.append(_sparse_scores(store, "attacker", probe))
        # the victim's own search counts the victim's documents
        assert len(_sparse_scores(store, "victim", victim_text)) == 10
    assert seen[0] and seen[0] == seen[1]


def test_tenants_get_term_spaces_in_order_and_copies_keep_them(stores, lexical):
    """A fresh generation numbers the tenants' term spaces as they first write; incremental
    writes keep those and add new tenants after them, so every document stays findable."""
    store = stores(lexical)
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(TEXTS, tenant="t1"))
        w.upsert(*_points(["Quorbel in t2"], tenant="t2", start=100))
    with store.open_live() as idx:
        assert idx.tenant_spaces == {"t1": 0, "t2": 1}
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel again"], tenant="t1", start=200))
        w.upsert(*_points(["Quorbel in t3"], tenant="t3", start=300))
    with store.open_live() as idx:
        assert idx.tenant_spaces == {"t1": 0, "t2": 1, "t3": 2}
        # a tenant without documents finds nothing, in sparse mode and in hybrid
        assert idx.search(None, "nobody", 5, mode="sparse", text="Quorbel") == []
        assert (
            _docs(idx.search(_points(["x"])[1][0], "nobody", 5, mode="hybrid", text="Quorbel"))
            == []
        )
    assert set(_sparse_scores(store, "t1", "Quorbel")) == {"2", "200"}
    assert set(_sparse_scores(store, "t2", "Quorbel")) == {"100"}
    assert set(_sparse_scores(store, "t3", "Quorbel")) == {"300"}


def test_a_generation_from_before_keeps_one_shared_term_space(stores, lexical):
    """A generation written before tenant term spaces answers as it did, and so do its
    copies, until a full refresh gives it spaces."""
    store = stores(lexical)
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(TEXTS, tenant="t1"))
    _forget_term_spaces(store)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel again"], tenant="t2", start=100))
    with store.open_live() as idx:
        assert idx.tenant_spaces is None
        assert idx.outdated_layout() == ["one BM25 term space shared by all tenants"]
    assert set(_sparse_scores(store, "t1", "Quorbel")) == {"2"}
    assert set(_sparse_scores(store, "t2", "Quorbel")) == {"100"}
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(TEXTS, tenant="t1"))
    with store.open_live() as idx:
        assert idx.tenant_spaces == {"t1": 0}


def _forget_term_spaces(store) -> None:
    """Rewrite the live generation as one built before term spaces: one shared space."""
    from semflow.index.base import TENANT_SPACES

    ids, vecs, pls = _points(TEXTS, tenant="t1")
    with store.open_live() as idx:
        if isinstance(store, EdgeStore):
            meta_file = store._gen_dir(idx.generation) / "meta.json"
            meta = json.loads(meta_file.read_text())
            meta[TENANT_SPACES] = None
            meta_file.write_text(json.dumps(meta))
        else:
            store.client.update_collection(idx.collection, metadata={TENANT_SPACES: None})
    # the points were written in t1's space 0: rewrite them in the shared space
    with store.writer(MV, DIM) as w:
        w.upsert(ids, vecs, pls)


def test_a_server_reader_finds_a_tenant_written_after_it_opened(lexical, monkeypatch):
    """On the server backend writes go into the live collection: a reader opened before a
    tenant's first document reads the tenant map again when it meets that tenant, but a
    tenant without documents searching in a loop costs the server one metadata read per
    `TENANT_MAP_RECHECK_S`, not one per search."""
    from qdrant_client import QdrantClient

    from semflow.index import qdrant_server

    client = QdrantClient(location=":memory:")
    store = ServerStore(":memory:", f"c{time.monotonic_ns()}", client=client, lexical=lexical)
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(TEXTS, tenant="t1"))
    reader = store.open_live()
    reads = []
    real_get = client.get_collection
    monkeypatch.setattr(
        client, "get_collection", lambda *a, **k: reads.append(a) or real_get(*a, **k)
    )
    for _ in range(50):
        assert reader.search(None, "late", 5, mode="sparse", text="Quorbel") == []
    assert len(reads) == 1
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel arrives late"], tenant="late", start=100))
    monkeypatch.setattr(qdrant_server, "TENANT_MAP_RECHECK_S", 0.0)  # the interval has passed
    reads.clear()
    assert _docs(reader.search(None, "late", 5, mode="sparse", text="Quorbel")) == ["100"]
    assert _docs(reader.search(None, "t1", 5, mode="sparse", text="Quorbel")) == ["2"]
    assert len(reads) == 1  # a tenant the reader knows costs no read
    reader.close()


def test_a_write_that_fails_after_a_new_tenant_leaves_search_as_it_was(stores, lexical):
    """A fault after a writer gave a new tenant its space, then more traffic: the embedded
    store publishes nothing; the server (whose incremental writes land in the live collection)
    rolls the points back but keeps the space it stored (a reader may have cached it). Either
    way the others' scores hold and the tenant's retried write is found in its one space."""
    store = stores(lexical)
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(TEXTS, tenant="t1"))
    before = _sparse_scores(store, "t1", "Quorbel refund")
    with pytest.raises(RuntimeError, match="boom"), store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel for the newcomer"], tenant="new", start=100))
        raise RuntimeError("boom")
    assert _sparse_scores(store, "t1", "Quorbel refund") == before
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel for the newcomer"], tenant="new", start=100))
    with store.open_live() as idx:
        assert idx.tenant_spaces == {"t1": 0, "new": 1}
    assert set(_sparse_scores(store, "new", "Quorbel")) == {"100"}
    assert list(_sparse_scores(store, "t1", "Quorbel refund")) == list(before)
