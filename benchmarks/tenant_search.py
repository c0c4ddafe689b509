"""Sparse and hybrid search in a multi-tenant embedded index: a term space per tenant against
the one shared space before (the same-run reference). Prints one JSON object.

Two indexes of `--points` points (random normalised 384-d vectors; Banking77 train texts,
spread round-robin over `--tenants` tenants) are built the same way, except for the sparse
layout, into a temporary folder. `--queries` Banking77 test texts are searched as tenant
`t0` in sparse and hybrid mode (tenant filter, top 10, after the service's warm-up), twice
per layout. With a term space per tenant, a search walks its own tenant's posting lists
only; in the shared space it walks every tenant's and filters them.

Usage: python benchmarks/tenant_search.py [--points 200000] [--tenants 10] [--queries 500]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from benchmarks._load import best_ratio, int_options, latency_ms
from semflow.config import SAMPLE_DIR, get_settings, load_settings
from semflow.index import open_store
from semflow.index.base import TENANT_SPACES

MV = "bench-model@000000000000"
DIM = 384


def _build(home: Path, texts: list[str], n: int, tenants: int, shared: bool) -> tuple[Any, float]:
    store = open_store(load_settings(home=home, index_backend="edge"))  # as a sync opens it
    if shared:  # the layout before: one term space for every tenant
        layout = store._sparse_layout
        store._sparse_layout = lambda base: {**layout(base), TENANT_SPACES: None}  # type: ignore[method-assign]
    rng = np.random.default_rng(n)
    t = time.perf_counter()
    with store.writer(MV, DIM, fresh=True) as w:
        for start in range(0, n, 10_000):
            idx = range(start, min(n, start + 10_000))
            ids = [f"00000000-0000-0000-0000-{i:012d}" for i in idx]
            payloads = [
                {"tenant": f"t{i % tenants}", "type": "doc", "source": "bench", "doc_id": str(i),
                 "labels": [], "text": texts[i % len(texts)]}
                for i in idx
            ]  # fmt: skip
            v = rng.normal(size=(len(ids), DIM)).astype(np.float32)
            w.upsert(ids, v / np.linalg.norm(v, axis=1, keepdims=True), payloads)
    return store, time.perf_counter() - t


def _latencies(store: Any, queries: list[str], vectors: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with store.open_live() as idx:
        idx.warm(get_settings().index_warm_queries)
        for mode in ("sparse", "hybrid"):
            for rep in range(2):
                lat = []
                for text, v in zip(queries, vectors, strict=True):
                    t = time.perf_counter()
                    hits = idx.search(v, "t0", 10, mode=mode, text=text)
                    lat.append((time.perf_counter() - t) * 1000)
                    assert all(h.payload["tenant"] == "t0" for h in hits)
                out[f"{mode} pass {rep + 1}"] = latency_ms(lat)
    return out


def main() -> None:
    args = int_options(__doc__, points=200_000, tenants=10, queries=500)
    texts = pd.read_csv(SAMPLE_DIR / "train.csv").text.tolist()
    queries = pd.read_csv(SAMPLE_DIR / "test.csv").text.tolist()[: args.queries]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(queries), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tmp = Path(tempfile.mkdtemp(prefix="semflow-tenants-"))
    out: dict[str, Any] = {
        "points": args.points,
        "tenants": args.tenants,
        "queries": len(queries),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_start": round(os.getloadavg()[0], 1),
    }
    try:
        for name, shared in (("shared space (before)", True), ("space per tenant", False)):
            store, build_s = _build(tmp / name.split()[0], texts, args.points, args.tenants, shared)
            out[name] = {"build_s": round(build_s, 1), **_latencies(store, queries, vectors)}
            shutil.rmtree(tmp / name.split()[0], ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    before, now = out["shared space (before)"], out["space per tenant"]
    out["ratio_p50_before_over_now"] = {
        mode: best_ratio(
            [before[f"{mode} pass {r}"]["p50_ms"] for r in (1, 2)],
            [now[f"{mode} pass {r}"]["p50_ms"] for r in (1, 2)],
        )
        for mode in ("sparse", "hybrid")
    }
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 1)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
