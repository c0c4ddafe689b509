"""Sync benchmark: prints one JSON object; compares sync with raw `model.encode` in the same run.

1. raw `model.encode` throughput on the Banking77 texts (the reference);
2. a full sync of the same N documents (default 10,000) through plan -> embed -> apply;
3. a no-change re-sync of those N;
4. a 100k-point embedded index (vectors: real embeddings of the sample plus small noise, so
   the 100k build does not spend 20 minutes embedding), its no-change re-sync, and search
   latency with the tenant filter on it, after the warm-up the service runs on a generation
   before it serves it (`VectorIndex.warm`, `index_warm_queries` searches).

Usage: python benchmarks/sync.py [--docs 10000] [--big 100000] [--queries 1000]
Goals: ratio >= 0.9, resync_100k_s <= 10, search_p99_ms <= 5.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from benchmarks._load import int_options
from semflow.app import Services
from semflow.config import SAMPLE_DIR, load_settings


class NoisyEmbedder:
    """Real sample embeddings plus noise, posing as the real model (same version)."""

    def __init__(self, real, base: np.ndarray, seed: int = 0) -> None:
        self.version, self.dimension = real.version, real.dimension
        self.base = base
        self.rng = np.random.default_rng(seed)
        self.i = 0

    def encode(self, texts):
        n = len(texts)
        rows = self.base[(np.arange(self.i, self.i + n)) % len(self.base)]
        self.i += n
        v = rows + self.rng.normal(scale=0.05, size=rows.shape).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write_corpus(path: Path, texts: list[str], labels: list[str], n: int) -> None:
    reps = (n + len(texts) - 1) // len(texts)
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "text": [
                f"{t} (#{i // len(texts)})" if i >= len(texts) else t
                for i, t in enumerate((texts * reps)[:n])
            ],
            "category": (labels * reps)[:n],
        }
    )
    df.to_parquet(path)


def main() -> None:
    args = int_options(__doc__, docs=10_000, big=100_000, queries=1000)

    from semflow.embedding import resolve_embedder
    from semflow.sources import FieldMapping, FileSource
    from semflow.sync import run_sync

    tmp = Path(tempfile.mkdtemp(prefix="semflow-bench-"))
    train = pd.read_csv(SAMPLE_DIR / "train.csv")
    texts, labels = train.text.tolist(), train.category.tolist()
    reps = (args.docs + len(texts) - 1) // len(texts)
    docs_texts = (texts * reps)[: args.docs]

    base = load_settings(home=tmp / "home")
    embedder = resolve_embedder(base)
    embedder.encode(["warm up"])  # load weights outside the timings

    t = time.perf_counter()
    ref = embedder.encode(docs_texts)
    encode_s = time.perf_counter() - t

    mapping = FieldMapping(
        id="id", text="text", labels="category", updated_at=None, tenant_value="bank"
    )
    small = tmp / "small.parquet"
    _write_corpus(small, texts, labels, args.docs)
    s = load_settings(home=tmp / "home")
    src = FileSource("bench", small, mapping)
    svc = Services.from_settings(s, embedder=embedder)
    _ = svc.catalog, svc.store  # built outside the timings
    t = time.perf_counter()
    r = run_sync(src, svc)
    sync_s = time.perf_counter() - t
    assert r.counts["indexed"] == args.docs, r.counts
    t = time.perf_counter()
    r2 = run_sync(src, svc)
    resync_small_s = time.perf_counter() - t
    assert r2.counts["skipped"] == args.docs, r2.counts

    # 100k index, built with noisy copies of real embeddings.
    big_home = tmp / "big"
    sb = load_settings(home=big_home, sync_partition_size=10_000)
    big = tmp / "big.parquet"
    _write_corpus(big, texts, labels, args.big)
    bsrc = FileSource("big", big, mapping)
    big_svc = Services.from_settings(sb)
    bstore = big_svc.store
    t = time.perf_counter()
    run_sync(
        bsrc,
        Services.from_settings(
            sb, embedder=NoisyEmbedder(embedder, ref), catalog=big_svc.catalog, store=bstore
        ),
    )
    build_big_s = time.perf_counter() - t
    t = time.perf_counter()
    r3 = run_sync(
        bsrc, Services.from_settings(sb, embedder=embedder, catalog=big_svc.catalog, store=bstore)
    )
    resync_big_s = time.perf_counter() - t
    assert r3.counts["skipped"] == args.big, r3.counts

    test_texts = pd.read_csv(SAMPLE_DIR / "test.csv").text.tolist()[: args.queries]
    qv = embedder.encode(test_texts)
    lat = []
    with bstore.open_live() as idx:
        points = idx.count()
        # What the service's index watcher does before it swaps a generation in.
        t = time.perf_counter()
        warmed = idx.warm(sb.index_warm_queries)
        warm_s = time.perf_counter() - t
        for v in qv:
            t = time.perf_counter()
            hits = idx.search(v, "bank", 10)
            lat.append((time.perf_counter() - t) * 1000)
            assert len(hits) == 10
    lat_a = np.array(lat)

    enc_rate = args.docs / encode_s
    sync_rate = args.docs / sync_s
    out = {
        "docs": args.docs,
        "encode_docs_per_s": round(enc_rate, 1),
        "sync_docs_per_s": round(sync_rate, 1),
        "ratio": round(sync_rate / enc_rate, 3),
        "resync_s": {
            str(args.docs): round(resync_small_s, 2),
            str(args.big): round(resync_big_s, 2),
        },
        "build_big_index_s": round(build_big_s, 2),
        "big_index_points": points,
        "search_warm_up": {"searches": warmed, "s": round(warm_s, 3)},
        "search_p50_ms": round(float(np.percentile(lat_a, 50)), 3),
        "search_p99_ms": round(float(np.percentile(lat_a, 99)), 3),
        "goals": {"ratio": ">= 0.9", "resync_100k_s": "<= 10", "search_p99_ms": "<= 5"},
        "cpu_count": os.cpu_count(),
    }
    out["pass"] = {
        "ratio": out["ratio"] >= 0.9,
        "resync_big": resync_big_s <= 10,
        "search_p99": out["search_p99_ms"] <= 5,
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
