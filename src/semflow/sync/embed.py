"""Step 2, embed: one partition of a plan to a vectors file, one call per worker.

Vectors are content-addressed (embedder version + texts) in the source's staging folder, so
a retried or resumed run reuses what a previous attempt finished.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from semflow.embedding import Embedder, check_embedder
from semflow.sync.plan import SyncPlan, read_lines


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
    check_embedder(embedder.version, plan.embedder_version, "the plan was made for")
    rows = read_lines(Path(part))
    out = vectors_path(plan, rows)
    if out.exists():
        return str(out)
    vecs = embedder.encode([r["index_text"] for r in rows])
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, out)
    return str(out)
