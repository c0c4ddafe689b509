"""Step 2, embed: partitions of a plan to vectors files (one partition per worker in a DAG).

Vectors are content-addressed (embedder version + texts) in the source's staging folder, so
a retried or resumed run reuses what a previous attempt finished.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from semflow.embedding import Embedder, check_embedder
from semflow.sync.plan import SyncPlan, read_lines

log = logging.getLogger("semflow.sync")


def vectors_path(plan: SyncPlan, rows: list[dict[str, Any]]) -> Path:
    """Where the vectors of a partition's `rows` are (or will be) stored."""
    h = hashlib.sha256(plan.embedder_version.encode())
    for r in rows:
        h.update(r["index_text"].encode("utf-8"))
        h.update(b"\0")
    cache = Path(plan.plan_dir).parent / "vectors"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{h.hexdigest()[:32]}.npy"


def embed_partition(plan: SyncPlan, part: str, embedder: Embedder) -> str:
    """Embed one partition; reuses a finished result (a retried or resumed run)."""
    return embed_partitions(plan, [part], embedder, group_texts=1)[0]


def embed_partitions(
    plan: SyncPlan,
    parts: list[str],
    embedder: Embedder,
    group_texts: int,
    on_done: Callable[[], None] | None = None,
) -> list[str]:
    """Embed partitions, consecutive ones together in calls of up to `group_texts` texts
    (sorted by length across partitions, batches pad less: 10k Banking77 texts in one call
    against five of 2000, torch 6% faster, onnx-int8 1-2%); a partition whose vectors exist
    is reused. `on_done()` follows each partition saved (or found)."""
    check_embedder(embedder.version, plan.embedder_version, "the plan was made for")
    out: list[str] = []
    group: list[tuple[Path, list[str]]] = []
    done = 0

    def saved() -> None:
        nonlocal done
        done += 1
        # a saved partition is a resume point: worth its own log line
        log.info("embedded partitions: %d/%d", done, len(parts))
        if on_done is not None:
            on_done()

    def flush() -> None:
        vecs = embedder.encode([t for _, texts in group for t in texts])
        start = 0
        for path, texts in group:
            _save(path, vecs[start : start + len(texts)])
            start += len(texts)
            saved()
        group.clear()

    for part in parts:
        rows = read_lines(Path(part))
        path = vectors_path(plan, rows)
        out.append(str(path))
        if path.exists():
            saved()
            continue
        if group and sum(len(t) for _, t in group) + len(rows) > group_texts:
            flush()
        group.append((path, [r["index_text"] for r in rows]))
    if group:
        flush()
    return out


def _save(path: Path, vecs: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)
