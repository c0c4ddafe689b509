"""Killed and concurrent syncs: 0 duplicate and 0 missing points, catalog consistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from semflow.app import Services
from semflow.catalog import INDEXED, Catalog
from semflow.config import get_settings
from semflow.index import open_store
from semflow.index.qdrant_edge import EdgeIndex
from semflow.sources import FieldMapping, FileSource
from semflow.sync import run_sync

pytestmark = pytest.mark.integration
N = 24


@pytest.fixture
def corpus(tmp_path, semflow_home, monkeypatch):
    path = tmp_path / "docs.jsonl"
    with path.open("w") as fh:
        for i in range(N):
            fh.write(
                json.dumps({"id": i, "text": f"support question number {i} about my card"}) + "\n"
            )
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n  - name: notes\n    kind: files\n"
        f"    path: {path}\n    mapping: {{updated_at: null}}\n"
    )
    monkeypatch.setenv("SEMFLOW_SOURCES_FILE", str(sources))
    monkeypatch.setenv("SEMFLOW_SYNC_PARTITION_SIZE", "4")  # 6 partitions
    monkeypatch.setenv("SEMFLOW_SYNC_EMBED_GROUP", "4")  # one partition per embedding call
    get_settings.cache_clear()
    return FileSource("notes", path, FieldMapping(updated_at=None))


def assert_complete(expected: int = N) -> None:
    s = get_settings()
    with open_store(s).open_live() as idx:
        pairs = list(idx.iter_payloads("notes", fields=("doc_id",)))
    doc_ids = [p["doc_id"] for _, p in pairs]
    assert len(doc_ids) == len(set(doc_ids)), "duplicate points"
    assert set(doc_ids) == {str(i) for i in range(expected)}, "missing points"
    assert Catalog(s.catalog_database_url).ids("notes", [INDEXED]) == set(doc_ids)


class Flaky:
    """Wraps the embedder and raises on the k-th batch, like a worker dying mid-run."""

    def __init__(self, inner, fail_on: int):
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.version, self.dimension = inner.version, inner.dimension

    def encode(self, texts):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("worker died")
        return self.inner.encode(texts)


def test_exception_after_k_embed_batches_then_rerun(corpus, embedder):
    with pytest.raises(RuntimeError, match="worker died"):
        run_sync(corpus, Services.from_settings(None, embedder=Flaky(embedder, fail_on=4)))
    assert open_store().live_generation() is None
    assert Catalog(get_settings().catalog_database_url).ids("notes", [INDEXED]) == set()
    run_sync(corpus, Services.from_settings(None, embedder=embedder))
    assert_complete()


def test_exception_after_k_upsert_batches_then_rerun(corpus, embedder, monkeypatch):
    run_sync(corpus, Services.from_settings(None, embedder=embedder))
    corpus_path = corpus.path
    lines = corpus_path.read_text().splitlines()
    lines = [json.dumps({"id": i, "text": f"edited question {i}"}) for i in range(N)]
    corpus_path.write_text("\n".join(lines) + "\n")
    real, calls = EdgeIndex.upsert, {"n": 0}

    def dying_upsert(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed during upsert")
        return real(self, *a, **kw)

    monkeypatch.setattr(EdgeIndex, "upsert", dying_upsert)
    with pytest.raises(RuntimeError):
        run_sync(corpus, Services.from_settings(None, embedder=embedder))
    monkeypatch.setattr(EdgeIndex, "upsert", real)
    # The half-written generation was discarded: readers still see the old texts.
    with open_store().open_live() as idx:
        texts = {p["text"] for _, p in idx.iter_payloads("notes", ("text",))}
    assert all(t.startswith("support question") for t in texts)
    result = run_sync(corpus, Services.from_settings(None, embedder=embedder))
    assert result.counts["indexed"] == N
    assert_complete()
    with open_store().open_live() as idx:
        texts = {p["text"] for _, p in idx.iter_payloads("notes", ("text",))}
    assert all(t.startswith("edited question") for t in texts)


def _cli(*args: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("semflow")
    return subprocess.Popen(
        [str(exe), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


@pytest.mark.slow
def test_sigkill_mid_sync_then_rerun(corpus):
    proc = _cli("sync", "--source", "notes")
    for line in proc.stderr:
        if "embedded partitions: 3/6" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert open_store().live_generation() is None
    rerun = _cli("sync", "--source", "notes")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert json.loads(out)["counts"]["indexed"] == N
    assert_complete()


@pytest.mark.slow
def test_same_window_twice_concurrently_equals_one_run(corpus):
    a, b = _cli("sync", "--source", "notes"), _cli("sync", "--source", "notes")
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, [o[1][-2000:] for o in outs]
    assert_complete()
    runs = [json.loads(o[0]) for o in outs]
    assert sorted(r["counts"]["points"] for r in runs) == [N, N]
