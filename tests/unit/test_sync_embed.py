"""The embed step: a plan's partitions are embedded together, in calls sorted by length across
partitions (so batches pad less), each partition still saved to its own content-addressed
file, and a partition whose file exists is never embedded again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from semflow.catalog import Catalog
from semflow.config import load_settings
from semflow.sources import FieldMapping, FileSource
from semflow.sync import embed_partition, embed_partitions, plan_sync
from semflow.sync.plan import SyncPlan, read_lines

VERSION = "test-embedder@1"


class LiveStore:
    """What plan_sync asks of the index: the live generation's model version."""

    def live_embedder_version(self) -> str:
        return VERSION


class RecordingEmbedder:
    """A vector per text derived from its bytes; records the texts of every call."""

    version = VERSION
    dimension = 4

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([_vector(t) for t in texts]) if texts else np.zeros((0, 4), np.float32)


def _vector(text: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], dtype=np.float32).copy()


@pytest.fixture
def plan(tmp_path: Path) -> SyncPlan:
    """A plan of 10 documents in partitions of 3 (3 + 3 + 3 + 1)."""
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"id": i, "text": f"document {i}"}) + "\n" for i in range(10))
    )
    source = FileSource("embed", path, FieldMapping(updated_at=None, tenant_value="bank"))
    settings = load_settings(home=tmp_path / "home", sync_partition_size=3)
    out = plan_sync(
        source,
        catalog=Catalog(f"sqlite:///{tmp_path}/catalog.db"),
        store=LiveStore(),  # type: ignore[arg-type]
        embedder_version=VERSION,
        settings=settings,
    )
    assert len(out.partitions) == 4
    return out


def _check_saved(plan: SyncPlan, paths: list[str]) -> None:
    """Each partition's file holds its own rows' vectors, in its rows' order."""
    for part, path in zip(plan.partitions, paths, strict=True):
        texts = [r["index_text"] for r in read_lines(Path(part))]
        np.testing.assert_array_equal(np.load(path), np.stack([_vector(t) for t in texts]))


def test_partitions_are_embedded_in_one_call_and_saved_apart(plan: SyncPlan) -> None:
    emb = RecordingEmbedder()
    done: list[str] = []
    paths = embed_partitions(plan, plan.partitions, emb, 100, on_done=lambda: done.append("saved"))  # type: ignore[arg-type]
    assert [len(c) for c in emb.calls] == [10]
    assert len(set(paths)) == 4 and len(done) == 4
    _check_saved(plan, paths)
    # one partition alone lands in the same file (what a DAG's mapped task writes)
    assert embed_partition(plan, plan.partitions[1], emb) == paths[1]  # type: ignore[arg-type]
    assert len(emb.calls) == 1


def test_a_call_holds_at_most_group_texts(plan: SyncPlan) -> None:
    emb = RecordingEmbedder()
    paths = embed_partitions(plan, plan.partitions, emb, 6)  # type: ignore[arg-type]
    assert [len(c) for c in emb.calls] == [6, 4]
    _check_saved(plan, paths)


def test_a_resumed_run_embeds_only_the_missing_partitions(plan: SyncPlan) -> None:
    first = embed_partitions(plan, plan.partitions, RecordingEmbedder(), 100)  # type: ignore[arg-type]
    Path(first[0]).unlink()
    Path(first[2]).unlink()
    emb = RecordingEmbedder()
    again = embed_partitions(plan, plan.partitions, emb, 100)  # type: ignore[arg-type]
    assert again == first
    missing = [r["index_text"] for p in (0, 2) for r in read_lines(Path(plan.partitions[p]))]
    assert sorted(t for c in emb.calls for t in c) == sorted(missing)
    _check_saved(plan, again)


def test_a_plan_for_another_embedder_is_refused(plan: SyncPlan) -> None:
    emb = RecordingEmbedder()
    emb.version = "other@1"
    with pytest.raises(Exception, match="other@1"):
        embed_partitions(plan, plan.partitions, emb, 100)  # type: ignore[arg-type]
    assert emb.calls == []


def test_a_sync_embeds_its_whole_plan_in_one_call(tmp_path: Path) -> None:
    from semflow.app import Services
    from semflow.sync import run_sync

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in range(7)))
    source = FileSource("embed", path, FieldMapping(updated_at=None, tenant_value="bank"))
    emb = RecordingEmbedder()
    settings = load_settings(home=tmp_path / "home", sync_partition_size=2)
    result = run_sync(source, Services.from_settings(settings, embedder=emb))
    assert result.counts["indexed"] == 7 and result.counts["points"] == 7
    assert [len(c) for c in emb.calls] == [7]
    # SEMFLOW_SYNC_EMBED_GROUP bounds a call (partitions of 2, 2, 2, 1)
    path.write_text("".join(json.dumps({"id": i, "text": f"new {i}"}) + "\n" for i in range(7)))
    emb.calls.clear()
    small = load_settings(home=tmp_path / "home", sync_partition_size=2, sync_embed_group=4)
    result = run_sync(source, Services.from_settings(small, embedder=emb))
    assert result.counts["indexed"] == 7
    assert [len(c) for c in emb.calls] == [4, 3]
