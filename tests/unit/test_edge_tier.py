"""A writer's copy of a generation is opened on the cold tier and published on the hot one.

The writer of a small sync must not read the vectors and graphs it keeps (1.5 GB at 1M
points), and what it publishes must open, search and copy exactly like before.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
from pathlib import Path

import pytest

from semflow.index import edge_tier
from semflow.index.qdrant_edge import EdgeStore, _sealed
from tests.unit.test_index_clone import (
    DIM,
    MV,
    THRESHOLD_KB,
    _answers,
    _built,
    _change,
    _points,
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident(path: Path) -> float:
    """Fraction of `path`'s pages in the page cache (mincore(2) on a fresh mapping, which
    itself reads nothing)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = ctypes.create_string_buffer(pages)
        try:
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw) / pages


def _big_files(gen_dir: Path) -> list[Path]:
    """The sealed segments' vector and graph files: what opening on the hot tier reads."""
    seg = [s for s in (gen_dir / "segments").iterdir() if _sealed(s)]
    files = [f for s in seg for pat in ("vector_storage/matrix.dat", "vector_index/links*.bin")
             for f in s.glob(pat)]  # fmt: skip
    assert len(files) >= 2 * len(seg) >= 2
    return files


def test_a_writers_copy_leaves_the_vectors_and_graph_unread(tmp_path):
    """With the live generation's files out of the page cache, a writer opens its copy and
    changes it without reading the shared vector and graph files; a reader of the published
    generation reads them whole, as before (which is what shows the measure works)."""
    store = _built(tmp_path / "idx", 4000)
    files = _big_files(store._gen_dir(1))
    for f in files:
        _drop_cache(f)
    live_configs = _configs(store._gen_dir(1))
    with store.writer(MV, DIM) as w:
        _change(w)
        # the copy's files are the live generation's (hard links): the same pages; a header
        # page or two may be read (hot: all of them)
        assert max(_resident(f) for f in files) < 0.05
        # the tier switch is in the copy's own config files: the live generation's readers
        # open it on the hot tier meanwhile
        assert _configs(store._gen_dir(1)) == live_configs
        assert _configs(w.path)[0]["vectors"][""]["memory"] == "cold"
        assert "memory" not in live_configs[0]["vectors"][""]
        with store.open_live() as reader:
            assert reader.count() == 4000
    assert max(_resident(f) for f in files) < 0.05
    # the engine rebuilt no sealed segment (a tier it took for a config change would)
    kept = {s.name for s in (store._gen_dir(2) / "segments").iterdir()}
    assert {f.parents[1].name for f in files} <= kept
    with store.open_live() as idx:
        assert idx.count() == 4000 + 10 - 5
        assert min(_resident(f) for f in _big_files(store._gen_dir(2))) == 1.0


def _configs(gen_dir: Path) -> tuple[dict, list]:
    """The shard config and each segment's config (ids and versions left out)."""
    segs = sorted(
        json.dumps(json.loads((s / "segment.json").read_text())["config"], sort_keys=True)
        for s in (gen_dir / "segments").iterdir()
    )
    return json.loads((gen_dir / "edge_config.json").read_text()), segs


@pytest.mark.parametrize("sparse", [False, True])
def test_what_a_cold_writer_publishes_is_what_a_hot_one_would(tmp_path, monkeypatch, sparse):
    """The same syncs, one store written through cold copies and one through hot copies
    (the switch turned off): the same configs on disk, the same answers, as many sealed
    segments kept; in both, the optimizer sealed a new segment inside a writer's copy."""
    from semflow.config import get_settings
    from semflow.sparse import lexical_encoder

    results = {}
    for mode in ("hot", "cold"):
        with monkeypatch.context() as m:
            if mode == "hot":
                m.setattr("semflow.index.qdrant_edge.to_cold", lambda path: None)
            lexical = lexical_encoder(get_settings().base_embedder_dir) if sparse else None
            root = tmp_path / mode
            store = EdgeStore(root, keep=5, indexing_threshold_kb=THRESHOLD_KB, lexical=lexical)
            with store.writer(MV, DIM) as w:
                w.upsert(*_points(400))
            sealed_1 = {s.name for s in (store._gen_dir(1) / "segments").iterdir() if _sealed(s)}
            with store.writer(MV, DIM) as w:
                _change(w)
                w.upsert(*_points(300, start=5000, tag="v3"))  # seals another segment
            with store.writer(MV, DIM) as w:  # a copy of a copy
                w.delete(_points(3, start=5000)[0])
            gen3 = store._gen_dir(3)
            sealed_3 = {s.name for s in (gen3 / "segments").iterdir() if _sealed(s)}
            assert sealed_3 - sealed_1  # the optimizer sealed a segment in a writer's copy
            probe_ids, probe_vecs = _points(8, start=5000, tag="v3")[:2]
            with store.open_live() as idx:
                answers = _answers(idx, _points(20, start=0)[0] + probe_ids, probe_vecs)
                if sparse:
                    hits = idx.search(None, "t1", 5, mode="sparse", text="v3 5004 lorem")
                    answers += ([h.id for h in hits],)
            results[mode] = (_configs(gen3), answers, len(sealed_3 & sealed_1))
    assert results["cold"] == results["hot"]
    shard_cfg = results["cold"][0][0]
    assert "memory" not in shard_cfg["vectors"][""], shard_cfg


def test_a_layout_it_does_not_know_is_opened_as_it_is(tmp_path):
    """No sealed segment yet, a shard already on the cold tier, or a config it cannot read:
    nothing is switched."""
    store = EdgeStore(tmp_path / "small", keep=5)  # the engine's threshold: nothing sealed
    with store.writer(MV, DIM) as w:
        w.upsert(*_points(20))
    before = _configs(store._gen_dir(1))
    assert edge_tier.to_cold(store._gen_dir(1)) is None
    assert _configs(store._gen_dir(1)) == before
    store = _built(tmp_path / "sealed", 400)
    gen = store._gen_dir(1)
    hot = edge_tier.to_cold(gen)
    assert hot is not None and edge_tier.to_cold(gen) is None  # already cold
    edge_tier.to_hot(gen, hot)
    before = _configs(gen)
    # a segment config in a shape it was not written for: nothing switched, nothing written
    seg = next(s for s in (gen / "segments").iterdir() if not _sealed(s)) / "segment.json"
    text = seg.read_text()
    seg.write_text(json.dumps({"config": {"vector_data": {"": {"storage_type": "Mmap"}}}}))
    assert edge_tier.to_cold(gen) is None
    seg.write_text(text)
    assert _configs(gen) == before
    assert edge_tier.to_cold(gen) is not None
