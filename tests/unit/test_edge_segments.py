"""A big write into the embedded index is sealed as several segments, which the engine
searches in parallel, and answers exactly what one segment would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semflow.config import get_settings
from semflow.index.qdrant_edge import EdgeStore, _sealed
from semflow.sparse import lexical_encoder
from tests.unit.test_index_clone import DIM, MV, THRESHOLD_KB

WORDS = ["card", "lost", "payment", "refund", "transfer", "euro", "pin", "fee", "top", "up"]
QUERIES = ["lost card", "refund fee", "euro transfer", "top up pin"]


def _points(n: int, start: int = 0):
    rng = np.random.default_rng(start)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(start, start + n)]
    payloads = [
        {"tenant": "t1", "type": "a", "source": "s", "doc_id": str(i), "labels": ["x"],
         "text": " ".join(rng.choice(WORDS, size=6))}
        for i in range(start, start + n)
    ]  # fmt: skip
    return ids, vecs, payloads


def _store(root: Path, segment_points: int | None) -> EdgeStore:
    return EdgeStore(
        root,
        lock_timeout_s=0.5,
        lexical=lexical_encoder(get_settings().base_embedder_dir),
        indexing_threshold_kb=THRESHOLD_KB,
        segment_points=segment_points,
    )


def _sealed_sizes(store: EdgeStore) -> list[int]:
    """Bytes of dense vectors in each sealed segment of the live generation."""
    gen = store._gen_dir(store.live_generation())
    return sorted(
        sum(f.stat().st_size for f in (seg / "vector_storage").rglob("*") if f.is_file())
        for seg in (gen / "segments").iterdir()
        if _sealed(seg)
    )


def _ranked(hits) -> list[tuple[float, list[str]]]:
    """Hits as (score, ids) groups, best first; equal scores come in any order, and the last
    group is cut off at top_k, so it counts by its score only."""
    groups: dict[float, list[str]] = {}
    for h in hits:
        groups.setdefault(round(h.score, 4), []).append(h.id)
    ranked = [(score, sorted(ids)) for score, ids in groups.items()]
    return [*ranked[:-1], (ranked[-1][0], [])]


def _answers(store: EdgeStore, probes: np.ndarray):
    with store.open_live() as idx:
        return (
            idx.count(),
            [_ranked(idx.search(None, "t1", 10, mode="sparse", text=t)) for t in QUERIES],
            [idx.search(v, "t1", 1)[0].id for v in probes],
        )


def test_a_big_write_is_sealed_in_segments_that_answer_as_one(tmp_path: Path) -> None:
    n = 2600
    ids, vecs, payloads = _points(n)
    split, whole = _store(tmp_path / "split", 1000), _store(tmp_path / "whole", None)
    for store in (split, whole):
        with store.writer(MV, DIM, fresh=True) as w:
            w.upsert(ids, vecs, payloads)

    assert len(_sealed_sizes(whole)) == 1
    sizes = _sealed_sizes(split)
    # a segment per 1,024-point upsert batch past 1,000, then the rest
    assert len(sizes) == 3, sizes
    probes = vecs[::97]
    answers = _answers(split, probes)
    assert answers == _answers(whole, probes)
    assert answers[2] == ids[::97]

    # A later write adds its own segment; the full ones are never merged into a bigger one.
    more = _points(300, start=n)
    for store in (split, whole):
        with store.writer(MV, DIM) as w:
            w.upsert(*more)
    assert max(_sealed_sizes(split)) == max(sizes)
    probes = np.concatenate([probes, more[1][::50]])
    assert _answers(split, probes) == _answers(whole, probes)


def test_a_writer_that_fails_after_sealing_leaves_the_live_generation_and_the_next_write_works(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path / "idx", 1000)
    ids, vecs, payloads = _points(500)
    with store.writer(MV, DIM, fresh=True) as w:
        w.upsert(ids, vecs, payloads)
    probes = vecs[::50]
    before = _answers(store, probes)

    more = _points(2600, start=500)
    with pytest.raises(RuntimeError, match="sync failed"), store.writer(MV, DIM) as w:
        w.upsert(*more)  # seals two segments inside the writer's copy
        raise RuntimeError("sync failed")
    assert store.generations() == [1] and store.live_generation() == 1
    assert _answers(store, probes) == before

    with store.writer(MV, DIM) as w:
        w.upsert(*more)
    assert store.live_generation() == 2
    assert len(_sealed_sizes(store)) >= 3
    after = _answers(store, np.concatenate([probes, more[1][::97]]))
    assert after[0] == 3100 and after[2] == ids[::50] + more[0][::97]
