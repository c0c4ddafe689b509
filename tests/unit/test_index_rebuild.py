"""`rebuild_live`: an index in an older layout rewritten from its own points, on both backends,
with a fault mid-way and a second writer racing it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from semflow.errors import IndexError_
from semflow.index.base import VectorIndex
from semflow.index.rebuild import rebuild_live
from semflow.sparse import LexicalEncoder
from tests.unit.test_hybrid_index import DIM, MV, TEXTS


def _points(n: int, tenant: str, start: int = 0):
    rng = np.random.default_rng(start)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(start, start + n)]
    payloads = [
        {"tenant": tenant, "doc_id": str(start + i), "text": f"{TEXTS[i % len(TEXTS)]} #{i}"}
        for i in range(n)
    ]
    return ids, vecs, payloads


def _answers(store, vecs) -> list:
    """Dense answers (ids and scores) of both tenants to a few stored vectors."""
    with store.open_live() as idx:
        return [
            [(h.id, round(h.score, 5)) for h in idx.search(v, tenant, 5, mode="dense")]
            for v in vecs[:5]
            for tenant in ("t1", "t2")
        ]


def _vectors(store, ids) -> np.ndarray:
    with store.open_live() as idx:
        hits = {h.id: h.payload["_vector"] for h in idx.retrieve(ids, with_vectors=True)}
    return np.array([hits[i] for i in ids])


def test_an_old_layout_gets_this_releases_without_the_model(stores, lexical):
    """Stop words kept and no sparse vectors at all: both become this release's layout, with
    the same points, vectors and dense answers, and a term space per tenant."""
    before = LexicalEncoder(lexical.tokenizer_file.parent, stopwords=False)
    for old in (before, None):  # sparse vectors that kept stop words; none (before hybrid)
        a, b = _points(30, "t1"), _points(20, "t2", start=100)
        with stores(old).writer(MV, DIM, fresh=True) as w:
            w.upsert(*a)
            w.upsert(*b)
        store = stores(lexical)
        with store.open_live() as idx:
            assert idx.outdated_layout() == (
                ["stop words in its sparse vectors"] if old else ["no sparse vectors"]
            )
        answers, vectors = _answers(store, a[1]), _vectors(store, a[0] + b[0])
        report = rebuild_live(store)
        assert report.points == 50 and report.generation != report.replaced
        assert report.before["sparse_encoder"] == (old and old.version)
        assert report.after == {
            "sparse_encoder": lexical.version,
            "tenant_term_spaces": True,
            "stop_words_kept": False,
        }
        assert _answers(store, a[1]) == answers
        np.testing.assert_allclose(_vectors(store, a[0] + b[0]), vectors, atol=1e-6)
        with store.open_live() as idx:
            assert idx.count() == 50 and idx.tenant_spaces == {"t1": 0, "t2": 1}
            assert idx.outdated_layout() == []
            assert idx.search(None, "t1", 5, mode="sparse", text="where is") == []
            hits = idx.search(None, "t2", 50, mode="sparse", text="Quorbel")
            assert {h.payload["tenant"] for h in hits} == {"t2"}
            assert {h.payload["doc_id"] for h in hits} == {"102", "108", "114"}


def test_a_rebuild_of_several_pages_that_fails_leaves_the_live_generation(
    stores, lexical, monkeypatch
):
    store = stores(lexical)
    ids, vecs, pls = _points(2500, "t1")  # three pages of the engine's scroll
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(ids, vecs, pls)
    live, answers = store.live_generation(), _answers(store, vecs)
    pages = []
    real = VectorIndex.iter_points

    def failing(self):
        for page in real(self):
            pages.append(len(page[0]))
            if len(pages) == 2:
                raise OSError("disk full")
            yield page

    monkeypatch.setattr(VectorIndex, "iter_points", failing)
    with pytest.raises(OSError, match="disk full"):
        rebuild_live(store)
    assert store.live_generation() == live and _answers(store, vecs) == answers
    monkeypatch.setattr(VectorIndex, "iter_points", real)
    report = rebuild_live(store)  # then more traffic: the retry rebuilds everything
    assert report.points == 2500 and _answers(store, vecs) == answers
    with store.open_live() as idx:
        assert idx.count() == 2500


def test_a_writer_that_holds_the_lock_goes_first_and_its_points_are_rebuilt(stores, lexical):
    store = stores(lexical)
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(10, "t1"))
    holding, done = threading.Event(), []

    def sync_writer():
        with store.writer(MV, DIM) as w:
            holding.set()
            time.sleep(0.5)  # the rebuild waits for the lock meanwhile
            w.upsert(*_points(5, "t2", start=100))
        done.append(time.monotonic())

    t = threading.Thread(target=sync_writer)
    t.start()
    holding.wait(5)
    report = rebuild_live(store)
    t.join()
    assert done and report.points == 15
    with store.open_live() as idx:
        assert idx.count() == 15 and idx.tenant_spaces == {"t1": 0, "t2": 1}


def test_a_model_change_published_while_it_waited_is_not_relabelled(stores, lexical):
    """A re-index to another embedder wins the lock first: the rebuild must not copy its
    vectors under the old model's name; it refuses and leaves the new generation live."""
    store = stores(lexical)
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(10, "t1"))
    holding = threading.Event()

    def reindex():
        with store.writer("other-model@111111111111", DIM, fresh=True) as w:
            holding.set()
            time.sleep(0.5)
            w.upsert(*_points(10, "t1", start=50))

    t = threading.Thread(target=reindex)
    t.start()
    holding.wait(5)
    with pytest.raises(IndexError_, match="while the rebuild waited; run it again"):
        rebuild_live(store)
    t.join()
    with store.open_live() as idx:
        assert idx.embedder_version == "other-model@111111111111" and idx.count() == 10


def test_nothing_to_rebuild_says_so(stores, lexical):
    with pytest.raises(IndexError_, match="there is no live generation"):
        rebuild_live(stores(lexical))
