"""A failed write leaves the index as it was, on both backends: the embedded one never
publishes it; the server one (whose incremental writes land in the live collection) rolls it
back (semflow.index.server_undo)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from semflow.index import qdrant_server
from semflow.index.qdrant_server import ServerStore
from tests.unit.test_hybrid_index import DIM, MV, TEXTS, _points, _sparse_scores


def _snapshot(store):
    """Every point of the live generation: id -> (dense vector, payload)."""
    with store.open_live() as idx:
        return {
            pid: (vec.round(6).tolist(), pl)
            for ids, vecs, pls in idx.iter_points()
            for pid, vec, pl in zip(ids, vecs, pls, strict=True)
        }


def _seeded(store):
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(*_points(TEXTS, tenant="t1"))
        w.upsert(*_points(["a Quorbel refund for t2"], tenant="t2", start=50))
    return _snapshot(store)


def _failing_write(store):
    """Overwrites, creates and deletes points (one id touched twice), then fails."""
    ids, _, pls = _points(TEXTS[:3], tenant="t1")
    rng = np.random.default_rng(7)
    other = rng.normal(size=(3, DIM)).astype(np.float32)
    changed = [{**p, "text": "rewritten Quorbel text"} for p in pls]
    with pytest.raises(RuntimeError, match="boom"), store.writer(MV, DIM) as w:
        w.upsert(ids, other, changed)  # replaces three points
        w.upsert(*_points(["Quorbel newcomer", "another one"], tenant="new", start=100))
        w.delete([ids[0], *_points(TEXTS[3:5], tenant="t1", start=3)[0]])
        w.delete(["00000000-0000-0000-0000-000000000999"])  # never existed
        w.upsert(ids[:1], other[:1], changed[:1])  # deleted, then written again
        raise RuntimeError("boom")


def test_a_failed_write_leaves_every_point_as_it_was(stores, lexical):
    store = stores(lexical)
    before = _seeded(store)
    scores = _sparse_scores(store, "t1", "Quorbel refund password")
    _failing_write(store)
    assert _snapshot(store) == before
    assert _sparse_scores(store, "t1", "Quorbel refund password") == scores
    with store.open_live() as idx:
        assert idx.search(None, "new", 5, mode="sparse", text="Quorbel newcomer") == []
    # more traffic after the fault: the same write, now whole, is found
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel newcomer"], tenant="new", start=100))
    with store.open_live() as idx:
        hits = idx.search(None, "new", 5, mode="sparse", text="Quorbel newcomer")
    assert [h.payload["doc_id"] for h in hits] == ["100"]


def test_rollback_works_in_batches(monkeypatch, lexical):
    """A write of more points than one server call carries is rolled back whole."""
    monkeypatch.setattr(qdrant_server, "_BATCH", 2)
    store = ServerStore(":memory:", "batched", lexical=lexical)
    before = _seeded(store)
    _failing_write(store)
    assert _snapshot(store) == before


def test_a_rollback_the_server_refuses_leaves_the_writes_error_to_say_so(
    monkeypatch, lexical, caplog
):
    """The server goes away after the write failed: the write's own error is raised, with a
    note that its writes stay (the next sync writes them again); when it is back, a write
    goes through."""
    store = ServerStore(":memory:", "gone", lexical=lexical)
    _seeded(store)
    real_delete = store.client.delete

    def unreachable(*args, **kwargs):
        raise ConnectionError("server unreachable")

    caplog.set_level(logging.ERROR, logger="semflow.index")
    with pytest.raises(RuntimeError, match="boom") as err, store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel newcomer"], tenant="new", start=100))
        monkeypatch.setattr(store.client, "delete", unreachable)
        raise RuntimeError("boom")
    assert any("could not be rolled back" in n for n in err.value.__notes__)
    assert "server unreachable" in caplog.text
    monkeypatch.setattr(store.client, "delete", real_delete)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel newcomer"], tenant="new", start=100))
    assert "100" in {pl["doc_id"] for _, (_, pl) in _snapshot(store).items()}


def test_a_write_that_succeeds_stays_and_its_undo_file_is_closed(lexical):
    store = ServerStore(":memory:", "ok", lexical=lexical)
    _seeded(store)
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(["Quorbel newcomer", TEXTS[0]], tenant="new", start=100))
        w.upsert(*_points(TEXTS[:1], tenant="t1"))  # replaces a point: spilled to the file
        undo = w.undo
    assert undo is not None and len(undo) == 3 and undo._spill.closed
    assert len(_snapshot(store)) == len(TEXTS) + 3
