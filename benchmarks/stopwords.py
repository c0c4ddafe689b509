"""Sparse search with and without English stop words in the BM25 vectors, in one run. Prints
one JSON object.

Two sparse-only indexes of `--points` points are built straight on the engine (qdrant-edge,
sparse vectors with the IDF modifier, a keyword index on `tenant`, optimized once at the
end, both alike): the vectors of Banking77 train texts (tagged
`(#i)`, as benchmarks/sync.py's 1M index) by `LexicalEncoder(stopwords=False)`, the encoder
before (the same-run reference), and by the encoder now. `--queries` Banking77 test texts,
each encoded by its index's encoder, are searched with the tenant filter and top 10, in
alternating passes (before, now, before, now) so that a drifting machine load favours
neither. Search quality of the two encoders is `benchmarks/quality.py search`'s job.

Usage: python benchmarks/stopwords.py [--points 1000000] [--queries 1000]
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
from semflow.config import SAMPLE_DIR, get_settings
from semflow.sparse import LexicalEncoder


def _build(path: Path, enc: LexicalEncoder, texts: list[str], n: int) -> tuple[Any, float]:
    import qdrant_edge as q

    t = time.perf_counter()
    cfg = q.EdgeConfig(
        sparse_vectors={"bm25": q.EdgeSparseVectorParams(modifier=q.Modifier.Idf)},
        wal_enabled=False,
    )
    shard = q.EdgeShard.create(str(path), cfg)
    shard.update(q.UpdateOperation.create_field_index("tenant", q.PayloadSchemaType.Keyword))
    for start in range(0, n, 10_000):
        batch = [f"{texts[i % len(texts)]} (#{i})" for i in range(start, min(n, start + 10_000))]
        points = [
            q.Point(start + j, {"bm25": q.SparseVector(v.indices, v.values)}, {"tenant": "bank"})
            for j, v in enumerate(enc.documents(batch))
        ]
        shard.update(q.UpdateOperation.upsert_points(points))
    shard.optimize()
    shard.flush()
    return shard, time.perf_counter() - t


def _pass(shard: Any, queries: list[Any]) -> dict[str, float]:
    import qdrant_edge as q

    flt = q.Filter(must=[q.FieldCondition("tenant", match=q.MatchValue("bank"))])
    lat = []
    for terms in queries:
        vec = q.SparseVector(terms.indices, terms.values)
        t = time.perf_counter()
        hits = shard.query(
            q.QueryRequest(
                limit=10, query=q.Query.Nearest(vec, using="bm25"), filter=flt, with_payload=True
            )
        )
        lat.append((time.perf_counter() - t) * 1000)
        assert len(hits) == 10
    return latency_ms(lat)


def main() -> None:
    args = int_options(__doc__, points=1_000_000, queries=1000)
    model_dir = get_settings().base_embedder_dir
    encoders = {
        "stop words kept (before)": LexicalEncoder(model_dir, stopwords=False),
        "stop words dropped (now)": LexicalEncoder(model_dir),
    }
    texts = pd.read_csv(SAMPLE_DIR / "train.csv").text.tolist()
    tests = pd.read_csv(SAMPLE_DIR / "test.csv").text.tolist()[: args.queries]
    out: dict[str, Any] = {
        "points": args.points,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_start": round(os.getloadavg()[0], 1),
    }
    tmp = Path(tempfile.mkdtemp(prefix="semflow-stopwords-"))
    try:
        shards, queries = {}, {}
        for i, (name, enc) in enumerate(encoders.items()):
            shards[name], build_s = _build(tmp / str(i), enc, texts, args.points)
            # a query of stop words only has no sparse terms (hybrid answers it densely)
            queries[name] = [t for t in map(enc.query, tests) if t.indices]
            out[name] = {
                "version": enc.version,
                "build_s": round(build_s, 1),
                "queries": len(queries[name]),
                "mean_query_terms": round(
                    float(np.mean([len(t.indices) for t in queries[name]])), 2
                ),
            }
        for name, shard in shards.items():
            _pass(shard, queries[name][:200])  # warm-up: pages touched once
        for rep in (1, 2):
            for name, shard in shards.items():
                out[name][f"pass {rep}"] = _pass(shard, queries[name])
        for shard in shards.values():
            shard.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    before, now = (out[n] for n in encoders)
    out["ratio_before_over_now"] = {
        stat: best_ratio(
            [before[f"pass {r}"][stat] for r in (1, 2)], [now[f"pass {r}"][stat] for r in (1, 2)]
        )
        for stat in ("p50_ms", "p99_ms")
    }
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 1)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
