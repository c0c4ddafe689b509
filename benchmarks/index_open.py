"""Index open benchmark: prints one JSON object; the embedded store's payload placement
against the one before it (every payload index on the heap), built alike and measured in
the same run.

For each placement, an index of N points (random normalised 384-d vectors, payloads like
the sample's documents, HNSW built with ef_construct 32 as benchmarks/sync.py builds its 1M
index), cached under $SEMFLOW_BENCH_CACHE (/tmp/semflow-bench-index):
1. opening the live generation in a fresh process (what a service worker does on start and
   on every new generation), the heap it then holds (RssAnon), and search latency with the
   tenant filter after the service's warm-up, then with a filter on `labels` too (a cold
   index now); `--repeats` fresh processes, placements alternating;
2. a writer's copy: a 100-point write into the index, end to end (clone, open, upsert,
   optimise, publish): the part of an incremental sync that grows with the index.

Usage: python benchmarks/index_open.py [--points 200000] [--repeats 3] [--queries 500]
Goal: the new placement opens faster and holds less heap, with search latency within noise.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._load import int_options

CACHE = Path(os.environ.get("SEMFLOW_BENCH_CACHE", "/tmp/semflow-bench-index"))
MV = "bench-model@000000000000"
DIM = 384
PLACEMENTS = ("heap", "cold")  # before this change / now
_PROBE = r"""
import json, re, sys, time
import numpy as np
from semflow.index.qdrant_edge import EdgeStore

def anon_kb():
    return int(re.search(r"RssAnon:\s+(\d+)", open("/proc/self/status").read()).group(1))

store = EdgeStore(sys.argv[1])
rng = np.random.default_rng(7)
qv = rng.normal(size=(int(sys.argv[2]), 384)).astype(np.float32)
before = anon_kb()
t = time.perf_counter()
idx = store.open_live()
open_s = time.perf_counter() - t
opened = anon_kb()
idx.warm(200)
out = {"open_s": open_s, "heap_mb_open": (opened - before) / 1024}
for name, filters in (("", None), ("labels_", {"labels": "label_3"})):
    lat = []
    for v in qv:
        t = time.perf_counter()
        assert len(idx.search(v, "bank", 10, filters=filters)) == 10
        lat.append((time.perf_counter() - t) * 1000)
    out[name + "p50_ms"] = float(np.percentile(lat, 50))
    out[name + "p99_ms"] = float(np.percentile(lat, 99))
out["heap_mb_searched"] = (anon_kb() - before) / 1024
print(json.dumps(out))
"""


def _points(start: int, n: int, rng: np.random.Generator) -> tuple[list, np.ndarray, list]:
    from semflow.documents import Document, point_id

    ids, payloads = [], []
    for i in range(start, start + n):
        doc = Document(
            source="open", doc_id=str(i), text=f"document number {i} " * 6, tenant="bank",
            labels=(f"label_{i % 77}",),
        )  # fmt: skip
        ids.append(point_id("open", doc.doc_id))
        payloads.append(doc.payload(MV))
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return ids, v / np.linalg.norm(v, axis=1, keepdims=True), payloads


def _build(root: Path, n: int, placement: str) -> float:
    """The index of `n` points in `placement`; "heap" rebuilds the layout from before this
    change: the engine's default placement and every payload index on the heap."""
    import qdrant_edge as q

    import semflow.index.qdrant_edge as edge
    from semflow.index.base import INDEXED_FIELDS

    shutil.rmtree(root, ignore_errors=True)
    real_config, real_hot = q.EdgeConfig, edge._HOT_FIELDS
    hnsw = q.HnswIndexConfig(m=16, ef_construct=32, full_scan_threshold=10_000)

    def config(**kw: Any) -> Any:
        if placement == "heap":
            kw.pop("payload_memory"), kw.pop("id_tracker_memory")
        return real_config(hnsw_config=hnsw, **kw)

    q.EdgeConfig = config
    if placement == "heap":
        edge._HOT_FIELDS = INDEXED_FIELDS
    rng = np.random.default_rng(n)
    t = time.perf_counter()
    try:
        with edge.EdgeStore(root).writer(MV, DIM, fresh=True) as w:
            for start in range(0, n, 10_000):
                w.upsert(*_points(start, min(10_000, n - start), rng))
    finally:
        q.EdgeConfig, edge._HOT_FIELDS = real_config, real_hot
    return time.perf_counter() - t


def _small_write(root: Path, start: int) -> float:
    from semflow.index.qdrant_edge import EdgeStore

    t = time.perf_counter()
    with EdgeStore(root).writer(MV, DIM) as w:
        w.upsert(*_points(start, 100, np.random.default_rng(start)))
    return time.perf_counter() - t


def main() -> None:
    args = int_options(__doc__, points=200_000, repeats=3, queries=500)
    roots, builds = {}, {}
    for p in PLACEMENTS:
        roots[p] = CACHE / f"open-{args.points}-{p}"
        marker = roots[p] / "BUILT.json"
        if not marker.exists():
            builds[p] = round(_build(roots[p] / "idx", args.points, p), 1)
            marker.write_text(json.dumps({"build_s": builds[p]}))
        builds[p] = json.loads(marker.read_text())["build_s"]
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in PLACEMENTS}
    writes: dict[str, list[float]] = {p: [] for p in PLACEMENTS}
    for r in range(args.repeats):
        for p in PLACEMENTS:
            out = subprocess.run(
                [sys.executable, "-c", _PROBE, str(roots[p] / "idx"), str(args.queries)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            runs[p].append(json.loads(out.stdout))
            writes[p].append(_small_write(roots[p] / "idx", 10**9 + r * 100))
    result: dict[str, Any] = {"points": args.points, "repeats": args.repeats}
    for p in PLACEMENTS:
        result[p] = {
            k: round(statistics.median(run[k] for run in runs[p]), 3) for k in runs[p][0]
        } | {"write_100_s": round(statistics.median(writes[p]), 3), "build_s": builds[p]}
    heap, cold = result["heap"], result["cold"]
    result["cold_over_heap"] = {k: round(cold[k] / heap[k], 2) for k in heap if k != "build_s"}
    result["pass"] = {
        "opens_faster": cold["open_s"] < heap["open_s"],
        "less_heap": cold["heap_mb_open"] < heap["heap_mb_open"],
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
