"""Serving benchmark: model floor, HTTP floor (`floor_service.py`), /embed under 32 clients,
batch throughput, /search on a large index and RSS growth. Prints one JSON object.

    .venv/bin/python benchmarks/serve.py [--quick]

The load generator runs on the same machine as the server (as the issue asks), so on a
small box it competes with the model for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._load import banking77_texts, rss_mb  # noqa: E402

FLOOR = "benchmarks.floor_service:Floor"


def encode_per_s(embedder, texts: list[str], n: int) -> float:
    embedder.encode(texts[:32])
    batch = texts[:n]
    t0 = time.perf_counter()
    for i in range(0, len(batch), 32):
        embedder._encode_raw(batch[i : i + 32], True)
    return len(batch) / (time.perf_counter() - t0)


async def load(url: str, path: str, bodies: list, clients: int) -> dict:
    """`clients` concurrent workers post `bodies` (in order, shared queue); latency stats."""
    import httpx

    from tests.service.serve_helpers import ADMIN

    lat: list[float] = []
    errors: dict[str, int] = {}
    it = iter(bodies)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=ADMIN, timeout=120, limits=limits) as c:

        async def worker() -> None:
            for body in it:
                t = time.perf_counter()
                r = await c.post(f"{url}{path}", json=body)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    arr = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "rps": len(lat) / wall,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "errors": errors,
    }


def build_random_index(home: Path, version: str, n: int) -> None:
    """n unit vectors with the served model's version (encoding 100k texts would take minutes)."""
    from semflow.app import Services
    from semflow.config import load_settings
    from semflow.documents import Document

    rng = np.random.default_rng(0)
    store = Services.from_settings(load_settings(home=home)).store
    with store.writer(version, 384, fresh=True) as w:
        for start in range(0, n, 5000):
            m = min(5000, n - start)
            v = rng.normal(size=(m, 384)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            docs = [
                Document("bench", f"d{i}", f"text {i}", tenant=f"t{i % 10}", type="faq")
                for i in range(start, start + m)
            ]
            w.upsert([d.point_id for d in docs], v, [d.payload(version) for d in docs])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 1 minute)")
    args = ap.parse_args()
    q = args.quick
    n_embed = 640 if q else 3200
    n_batch = 40 if q else 160
    n_points = 10_000 if q else 100_000
    n_rss = 2_000 if q else 10_000

    from semflow.config import load_settings
    from semflow.embedding import resolve_embedder
    from tests.service.serve_helpers import serve

    texts = banking77_texts()
    s = load_settings()
    emb = resolve_embedder(s)
    out: dict = {"quick": q, "cpus": os.cpu_count()}
    out["encode_per_s"] = encode_per_s(emb, texts, 1024 if q else 3200)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        home = tmp / "home"
        t0 = time.perf_counter()
        build_random_index(home, emb.version, n_points)
        out["index_build_s"] = time.perf_counter() - t0
        procs: list = []
        env = {"SEMFLOW_CACHE_SIZE": "0", "SEMFLOW_MAX_CONCURRENCY": "1024"}
        # The HTTP floor: a trivial API behind the same guard, served on its own (no model).
        with serve(home, tmp, target=FLOOR, **env) as url:
            asyncio.run(load(url, "/echo", [{"text": "x"}] * 100, 8))  # warm up
            echo = asyncio.run(load(url, "/echo", [{"text": t} for t in texts[:n_embed]], 32))
        out["echo_rps"] = echo["rps"]
        out["limit_rps"] = 1 / (1 / out["encode_per_s"] + 1 / echo["rps"])
        with serve(home, tmp, procs, **env) as url:
            bodies = [{"texts": [t]} for t in texts[1000 : 1000 + n_embed]]
            e = asyncio.run(load(url, "/embed", bodies, 32))
            e["ratio"] = e["rps"] / out["limit_rps"]
            out["embed_32_clients"] = e
            starts = [(5000 + 32 * i) % (len(texts) - 32) for i in range(n_batch)]
            batches = [{"texts": texts[s : s + 32]} for s in starts]  # always 32 texts
            b = asyncio.run(load(url, "/embed", batches, 8))
            b["texts_per_s"] = b["rps"] * 32
            out["embed_8x32"] = b
            out["batch_ratio"] = b["texts_per_s"] / out["encode_per_s"]
            sq = [{"query": texts[i % len(texts)], "tenant": f"t{i % 10}"} for i in range(n_rss)]
            asyncio.run(load(url, "/search", sq[:200], 8))  # warm up (and fill the query cache)
            rss0 = rss_mb(procs[0])
            srch = asyncio.run(load(url, "/search", sq, 32))
            rss1 = rss_mb(procs[0])
            srch["points"] = n_points
            out["search"] = srch
            out["rss_mb_before"], out["rss_mb_after"] = rss0, rss1
            out["rss_growth"] = (rss1 - rss0) / rss0
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
