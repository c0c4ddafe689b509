"""Published generations list their files; one copied in part is refused before the engine
opens it (which would repair it in place, dropping points), and completing it repairs it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from semflow.errors import IndexError_
from semflow.index.edge_manifest import MANIFEST, MANIFEST_FLAG, file_sizes
from semflow.index.qdrant_edge import EdgeStore
from tests.unit.test_index_clone import DIM, MV, _hashes


def _publish(store: EdgeStore, start: int, n: int) -> int:
    vecs = np.random.default_rng(start).normal(size=(n, DIM)).astype(np.float32)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(start, start + n)]
    payloads = [
        {"tenant": "t", "source": "s", "doc_id": str(i), "text": f"lost card number {i}"}
        for i in range(start, start + n)
    ]
    with store.writer(MV, DIM) as w:
        w.upsert(ids, vecs, payloads)
    gen = store.live_generation()
    assert gen is not None
    return gen


@pytest.fixture
def store(tmp_path: Path, lexical) -> EdgeStore:
    """Sealed segments of 200 points with HNSW graphs, an appendable one, sparse vectors:
    every kind of file."""
    return EdgeStore(tmp_path / "idx", lexical=lexical, segment_points=200, indexing_threshold_kb=1)


def test_every_published_generation_lists_its_files_and_reopens(store: EdgeStore) -> None:
    _publish(store, 0, 500)
    gen = _publish(store, 1000, 10)  # a copy of generation 1: linked and copied files
    path = store._gen_dir(gen)
    listed = json.loads((path / MANIFEST).read_text())["files"]
    assert listed == file_sizes(path) and len(listed) > 50
    assert not any("journal" in rel for rel in listed)  # the engine deletes those at open
    assert {rel.split("/")[0] for rel in listed} == {"edge_config.json", "segments"}
    for _ in range(3):  # an open replays the journals: the next open must not see a loss
        with store.open_generation(gen) as idx:
            assert idx.verified_count() == 510
            hits = idx.search(np.ones(DIM, np.float32), "t", 5, mode="hybrid", text="lost card")
            assert len(hits) == 5


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_generation_copied_in_part_is_refused_untouched_and_served_once_complete(
    store: EdgeStore, tmp_path: Path, damage: str
) -> None:
    _publish(store, 0, 500)
    gen = _publish(store, 1000, 10)
    path = store._gen_dir(gen)
    victim = next(p for p in sorted(path.rglob("*id_tracker*")) if p.stat().st_size > 0)
    kept = tmp_path / "kept"
    kept.write_bytes(victim.read_bytes())
    if damage == "missing":
        victim.unlink()
    else:
        os.truncate(victim, victim.stat().st_size // 2)
    before = _hashes(path)

    for _ in range(2):
        with pytest.raises(IndexError_) as err:
            store.open_generation(gen)
        said = str(err.value)
        assert f"index generation {gen} is incomplete (" in said and str(path) in said
        assert ("1 missing" if damage == "missing" else "1 of another size") in said
        assert str(victim.relative_to(path)) in said and "semflow sync --full-refresh" in said
    assert _hashes(path) == before  # nothing in it was changed by the refusal
    with pytest.raises(IndexError_, match="is incomplete"):
        _publish(store, 2000, 1)  # no writer builds on it either
    assert store.live_generation() == gen

    victim.write_bytes(kept.read_bytes())  # the copy is completed
    with store.open_generation(gen) as idx:
        assert idx.verified_count() == 510
        assert len(idx.search(np.ones(DIM, np.float32), "t", 600)) == 510


def test_a_lost_or_corrupt_manifest_is_refused_and_one_from_before_manifests_opens(
    store: EdgeStore,
) -> None:
    gen = _publish(store, 0, 30)
    path = store._gen_dir(gen)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(IndexError_, match=f"index generation {gen}: .*manifest.json is corrupt"):
        store.open_generation(gen)
    (path / MANIFEST).unlink()  # lost in a copy: its metadata says it had one
    with pytest.raises(IndexError_, match=f"index generation {gen} is incomplete: its manifest"):
        store.open_generation(gen)
    _forget_manifest(store, gen)  # as published before manifests
    with store.open_generation(gen) as idx:
        assert idx.verified_count() == 30
    # its copy lists its own files: the manifest is never carried over from the base
    new = _publish(store, 100, 3)
    assert json.loads((store._gen_dir(new) / MANIFEST).read_text())["files"] == file_sizes(
        store._gen_dir(new)
    )
    assert store.meta(new)[MANIFEST_FLAG] is True


def _forget_manifest(store: EdgeStore, gen: int) -> None:
    """Make `gen` look published before manifests: no file list, no flag in its metadata."""
    path = store._gen_dir(gen)
    (path / MANIFEST).unlink(missing_ok=True)
    meta = json.loads((path / "meta.json").read_text())
    del meta[MANIFEST_FLAG]
    (path / "meta.json").write_text(json.dumps(meta))
