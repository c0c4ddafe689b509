"""The serving process's index watcher: a generation that fails to open or warm is refused,
retried with a back-off, reported, and served once it is whole; the old one keeps serving."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from semflow.errors import IndexError_
from semflow.index.qdrant_edge import EdgeIndex, EdgeStore
from semflow.serving import watcher as watcher_mod
from semflow.serving.watcher import MAX_RETRY_S, IndexWatcher
from tests.helpers import lose_id_trackers

DIM = 8
MV = "test-model@000000000000"


def _publish(store: EdgeStore, start: int, n: int, fresh: bool = False) -> int:
    rng = np.random.default_rng(start)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(start, start + n)]
    payloads = [{"tenant": "t", "source": "s", "doc_id": str(i)} for i in range(start, start + n)]
    with store.writer(MV, DIM, fresh=fresh) as w:
        w.upsert(ids, vecs, payloads)
    gen = store.live_generation()
    assert gen is not None
    return gen


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The watcher's monotonic clock, moved by the test (`clock.now += s`)."""
    fake = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(watcher_mod, "time", SimpleNamespace(monotonic=lambda: fake.now))
    return fake


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The generations the watcher opened, in order."""
    seen: list[int] = []
    real = EdgeStore.open_generation

    def counting(self: EdgeStore, gen: int) -> EdgeIndex:
        seen.append(gen)
        return real(self, gen)

    monkeypatch.setattr(EdgeStore, "open_generation", counting)
    return seen


def _watch(store: EdgeStore, warm: int = 5) -> IndexWatcher:
    # an hour between polls: the test calls refresh() itself, the thread never does
    return IndexWatcher(store, MV, poll_s=3600, grace_s=0, warm_queries=warm)


def test_a_damaged_generation_is_refused_backed_off_and_served_once_restored(
    tmp_path, clock, opens
) -> None:
    store = EdgeStore(tmp_path / "idx")
    _publish(store, 0, 20)
    w = _watch(store)
    try:
        assert w.current.generation == 1 and w.points == 20
        gen = _publish(store, 100, 5)
        restore = lose_id_trackers(store._gen_dir(gen), tmp_path / "aside")
        opens.clear()

        assert w.refresh() is False
        assert w.current.generation == 1 and w.points == 20  # the old one keeps serving
        assert w.live == gen and opens == [gen]
        assert f"index generation {gen} is incomplete (1 missing of its " in w.last_error
        assert "try 1 failed; the next in 1 s" in w.last_error
        hits = w.current.search(np.ones(DIM, np.float32) / np.sqrt(DIM), "t", 30)
        assert len(hits) == 20 and {int(h.payload["doc_id"]) for h in hits} == set(range(20))

        # Each poll before the next try opens nothing; the waits double up to the cap.
        waits = []
        for _ in range(9):
            before = len(opens)
            assert w.refresh() is False and len(opens) == before
            wait = float(w.last_error.rsplit("the next in ", 1)[1].split(" s")[0])
            waits.append(wait)
            clock.now += wait - 0.01
            assert w.refresh() is False and len(opens) == before
            clock.now += 0.02
            assert w.refresh() is False and len(opens) == before + 1
        assert waits == [1, 2, 4, 8, 16, 32, MAX_RETRY_S, MAX_RETRY_S, MAX_RETRY_S]

        restore()  # the copy is completed: nothing was lost meanwhile
        clock.now += MAX_RETRY_S
        assert w.refresh() is True
        assert w.current.generation == gen and w.points == 25 and w.last_error is None
        assert w.warmed == 5
        hits = w.current.search(np.ones(DIM, np.float32), "t", 30)
        assert {int(h.payload["doc_id"]) for h in hits} == set(range(20)) | set(range(100, 105))
    finally:
        w.close()


def test_a_warm_up_that_fails_halfway_closes_the_new_generation_and_is_tried_again(
    tmp_path, clock, monkeypatch
) -> None:
    store = EdgeStore(tmp_path / "idx")
    _publish(store, 0, 20)
    w = _watch(store, warm=10)
    try:
        gen = _publish(store, 100, 5)
        searched: list[int] = []
        closed: list[int] = []
        real_search, real_close = EdgeIndex.search, EdgeIndex.close

        def failing_search(self: EdgeIndex, *args, **kwargs):
            if self.generation == gen:
                searched.append(gen)
                if len(searched) == 4:  # the disk gives way in the middle of the warm-up
                    raise OSError("Input/output error")
            return real_search(self, *args, **kwargs)

        def recording_close(self: EdgeIndex) -> None:
            closed.append(self.generation)
            real_close(self)

        monkeypatch.setattr(EdgeIndex, "search", failing_search)
        monkeypatch.setattr(EdgeIndex, "close", recording_close)

        assert w.refresh() is False
        assert closed == [gen]  # the half-warmed generation is not left open
        assert w.current.generation == 1 and w.warmed == 10
        assert w.last_error.startswith(f"warming index generation {gen} failed: ")
        assert "Input/output error" in w.last_error and "try 1 failed" in w.last_error
        assert len(w.current.search(np.ones(DIM, np.float32), "t", 3)) == 3

        clock.now += 1.01
        assert w.refresh() is True  # the disk is back: the next try warms all of it
        assert w.current.generation == gen and w.warmed == 10 and w.last_error is None
        assert len(searched) == 4 + 10
        w._close_retired()  # grace 0: the old generation is closed at once
        assert closed == [gen, 1]
    finally:
        w.close()


def test_no_writer_builds_on_a_damaged_live_generation(tmp_path, clock, opens) -> None:
    """A copy of a damaged generation would be published as whole: the writer refuses it, a
    full refresh replaces it, and the watcher tries the new one at once (no back-off)."""
    store = EdgeStore(tmp_path / "idx")
    _publish(store, 0, 20)
    w = _watch(store)
    try:
        damaged = _publish(store, 100, 5)
        lose_id_trackers(store._gen_dir(damaged), tmp_path / "aside")
        assert w.refresh() is False and "the next in 1 s" in w.last_error
        with pytest.raises(IndexError_, match=f"index generation {damaged} is incomplete"):
            _publish(store, 200, 1)
        assert store.live_generation() == damaged

        rebuilt = _publish(store, 300, 7, fresh=True)
        opens.clear()
        assert w.refresh() is True and opens == [rebuilt]
        assert w.current.generation == rebuilt and w.points == 7 and w.last_error is None
    finally:
        w.close()


def test_a_corrupt_live_pointer_is_reported_and_the_old_generation_kept(tmp_path, clock) -> None:
    store = EdgeStore(tmp_path / "idx")
    gen = _publish(store, 0, 20)
    w = _watch(store)
    try:
        (store.root / "LIVE").write_text("garbage\n")
        assert w.refresh() is False
        assert "is corrupt" in w.last_error and w.current.generation == gen
        (store.root / "LIVE").write_text(str(gen))
        assert w.refresh() is False and w.last_error is None and w.current.generation == gen
    finally:
        w.close()


def test_a_generation_from_before_manifests_that_lost_points_is_refused_by_its_count(
    tmp_path, clock
) -> None:
    """Without a file list to check first, the engine opens it, smaller: the count published
    in its metadata refuses it, in the service and in the writer."""
    from tests.unit.test_edge_manifest import _forget_manifest

    store = EdgeStore(tmp_path / "idx")
    _publish(store, 0, 20)
    w = _watch(store)
    try:
        gen = _publish(store, 100, 5)
        _forget_manifest(store, gen)  # as published before manifests
        lose_id_trackers(store._gen_dir(gen), tmp_path / "aside")
        assert w.refresh() is False and w.current.generation == 1
        assert f"index generation {gen} holds 0 points but was published with 25" in (w.last_error)
        with pytest.raises(IndexError_, match="holds 0 points but was published with 25"):
            _publish(store, 200, 1)
    finally:
        w.close()
