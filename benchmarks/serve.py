"""Serving benchmark: semflow against the peer (infinity-emb, torch engine, same model) under
the same load generator in the same run, worker scaling, and the model floor, HTTP floor
(`floor_service.py`), /search on a large index and RSS growth. Prints one JSON object.

    .venv/bin/python benchmarks/serve.py [--quick] [--backend onnx-int8] [--workers 1,2]
                                         [--repeat 2] [--compare-only]

The peer is started by `shared/bench/peer_infinity.sh` (found above the checkout, or
SEMFLOW_PEER_SCRIPT); it installs itself into its own venv on first use. Both servers run
side by side and the phases alternate (semflow, peer, semflow, peer ...; the median of
`--repeat` is kept), so a busy neighbour slows both alike: quote the ratios. Issue 18's goals
with onnx-int8: 32 single-text clients >= 1.5x the peer's rps with p99 <= the peer's; 8
clients x 32 texts >= 0.9x in-process torch texts/s (batch 32); no errors.

The load generator runs on the same machine as the servers (as the issue asks), so on a
small box it competes with the model for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

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


# The load generator's HTTP client: httpx, as `shared/bench/loadgen.py` (the issue's
# generator), or aiohttp (`--client aiohttp`), whose per-request CPU is a fraction of httpx's:
# on 2 cores an httpx client at 32 connections drives the trivial echo service (the floor
# phase) at ~310 rps and aiohttp at ~880, so past ~200 rps httpx's latencies measure itself.
CLIENTS = ("httpx", "aiohttp")


async def load(url: str, path: str, bodies: list, clients: int, client: str) -> dict:
    """`clients` concurrent workers post `bodies` (in order, shared queue) with the HTTP
    library `client` (one of CLIENTS); latency stats."""
    from tests.service.serve_helpers import ADMIN

    lat: list[float] = []
    errors: dict[str, int] = {}
    it = iter(bodies)

    async def run(post: Callable[[Any], Any]) -> float:
        async def worker() -> None:
            for body in it:
                t = time.perf_counter()
                try:
                    status = str(await post(body))
                except Exception as err:  # a timeout or a dropped connection
                    status = type(err).__name__
                lat.append(time.perf_counter() - t)
                if status != "200":
                    errors[status] = errors.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0

    if client == "aiohttp":
        import aiohttp

        conn = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(headers=ADMIN, connector=conn, timeout=timeout) as a:

            async def post(body: Any) -> int:
                async with a.post(f"{url}{path}", json=body) as r:
                    await r.read()
                    return r.status

            wall = await run(post)
    else:
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(headers=ADMIN, timeout=120, limits=limits) as c:

            async def post(body: Any) -> int:
                return (await c.post(f"{url}{path}", json=body)).status_code

            wall = await run(post)
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


GOAL_SINGLE_RPS = 1.5  # semflow rps / peer rps, 32 single-text clients (p99 <= the peer's)
GOAL_BATCH = 0.9  # semflow texts/s, 8 clients x 32 texts / in-process torch texts/s


def peer_script() -> Path | None:
    """`shared/bench/peer_infinity.sh` above this checkout (main or a worktree), or
    SEMFLOW_PEER_SCRIPT."""
    env = os.environ.get("SEMFLOW_PEER_SCRIPT")
    if env:
        return Path(env)
    for up in REPO.parents:
        cand = up / "shared" / "bench" / "peer_infinity.sh"
        if cand.is_file():
            return cand
    return None


@contextmanager
def peer(tmp: Path, timeout_s: float = 900) -> Iterator[tuple[str, str] | None]:
    """The peer serving on a free port: yields (base URL, model id), or None without it."""
    import httpx

    from tests.helpers import free_port, stop_group

    script = peer_script()
    if script is None:
        yield None
        return
    port = free_port()
    log = (tmp / "peer.log").open("w")
    proc = subprocess.Popen(
        ["bash", str(script), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s  # the first start installs the peer
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the peer exited: {(tmp / 'peer.log').read_text()[-2000:]}")
            with suppress(httpx.HTTPError):
                r = httpx.get(f"{url}/models", timeout=2)
                if r.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the peer did not start in time")
            time.sleep(1)
        yield url, r.json()["data"][0]["id"]
    finally:
        stop_group(proc)
        log.close()


def single_bodies(texts: list[str], n: int, start: int) -> list[list[str]]:
    return [[texts[(start + i) % len(texts)]] for i in range(n)]


def batch_bodies(texts: list[str], n: int) -> list[list[str]]:
    starts = [(5000 + 32 * i) % (len(texts) - 32) for i in range(n)]
    return [texts[s : s + 32] for s in starts]  # always 32 texts


def compare(
    ours: str,
    theirs: tuple[str, str] | None,
    batches: list[list[str]],
    clients: int,
    repeat: int,
    client: str,
    local: Callable[[], float] | None = None,
) -> dict:
    """semflow's /embed and the peer's /embeddings under the same load, phases alternating
    (with `local`, texts/s of an in-process reference, as a third phase); the median repeat of
    each (by rps) and semflow/peer ratios."""
    runs: dict[str, list[dict]] = {"semflow": [], "peer": []}
    ref: list[float] = []
    warm = batches[:16]
    targets = [("semflow", ours, "/embed", lambda b: {"texts": b})]
    if theirs is not None:
        url, model = theirs
        targets.append(("peer", url, "/embeddings", lambda b: {"input": b, "model": model}))
    for _name, url, path, shape in targets:
        asyncio.run(load(url, path, [shape(b) for b in warm], min(clients, 8), client))
    for _ in range(repeat):
        for name, url, path, shape in targets:
            r = asyncio.run(load(url, path, [shape(b) for b in batches], clients, client))
            r["texts_per_s"] = r["rps"] * len(batches[0])
            runs[name].append(r)
        if local is not None:
            ref.append(local())
    out = {k: sorted(v, key=lambda r: r["rps"])[len(v) // 2] for k, v in runs.items() if v}
    if "peer" in out:
        s, p = out["semflow"], out["peer"]
        out["rps_ratio"] = s["rps"] / p["rps"]
        out["p99_ratio"] = s["p99_ms"] / p["p99_ms"]
    out["repeats"] = {k: [round(r["rps"], 1) for r in v] for k, v in runs.items() if v}
    if ref:
        out["in_process_texts_per_s"] = sorted(ref)[len(ref) // 2]
        out["repeats"]["in_process_texts_per_s"] = [round(x, 1) for x in ref]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--backend", default="onnx-int8", choices=("torch", "onnx", "onnx-int8"))
    ap.add_argument("--workers", default=f"1,2,{os.cpu_count()}", help="worker counts to run")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each phase")
    ap.add_argument("--compare-only", action="store_true", help="skip the floors, /search and RSS")
    ap.add_argument("--client", default="httpx", choices=CLIENTS, help="load client")
    args = ap.parse_args()
    q = args.quick
    n_embed = 640 if q else 1600
    n_batch = 40 if q else 100
    n_points = 10_000 if q else 100_000
    n_rss = 2_000 if q else 10_000
    workers = sorted({int(w) for w in args.workers.split(",")})

    from semflow.config import load_settings
    from semflow.embedding import resolve_embedder
    from tests.service.serve_helpers import serve

    texts = banking77_texts()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        home = tmp / "home"
        s = load_settings(home=home, backend=args.backend)
        torch_emb = resolve_embedder(load_settings(home=home, backend="torch"))
        emb = resolve_embedder(s)  # an ONNX backend exports into `home` here, once
        out: dict = {
            "quick": q,
            "cpus": os.cpu_count(),
            "backend": args.backend,
            "client": args.client,
        }
        out["load_before"] = os.getloadavg()
        out["encode_per_s"] = encode_per_s(emb, texts, 1024 if q else 3200)
        if not args.compare_only:  # /embed needs no index
            t0 = time.perf_counter()
            build_random_index(home, emb.version, n_points)
            out["index_build_s"] = time.perf_counter() - t0
        torch_emb.encode(texts[:32])  # loaded before the first phase

        def torch_in_process() -> float:
            """The batch goal's reference, measured between the served phases: in-process
            torch (sentence-transformers), batches of 32 texts."""
            return encode_per_s(torch_emb, texts, 160 if q else 640)

        env = {
            "SEMFLOW_CACHE_SIZE": "0",
            "SEMFLOW_MAX_CONCURRENCY": "1024",
            "SEMFLOW_BACKEND": args.backend,
        }
        if not args.compare_only:
            # The HTTP floor: a trivial API behind the same guard, served on its own (no model).
            with serve(home, tmp, target=FLOOR, **env) as url:
                asyncio.run(load(url, "/echo", [{"text": "x"}] * 100, 8, args.client))  # warm up
                bodies = [{"text": t} for t in texts[:n_embed]]
                echo = asyncio.run(load(url, "/echo", bodies, 32, args.client))
            out["echo_rps"] = echo["rps"]
            out["limit_rps"] = 1 / (1 / out["encode_per_s"] + 1 / echo["rps"])
        singles = single_bodies(texts, n_embed, 1000)
        batches = batch_bodies(texts, n_batch)
        with peer(tmp) as theirs:
            out["peer"] = None if theirs is None else {"engine": "infinity-emb torch"}
            out["workers"] = {}
            for w in workers:
                procs: list = []
                with serve(home, tmp, procs, SEMFLOW_WORKERS=str(w), **env) as url:
                    row: dict = {"threads_per_worker": load_settings(workers=w).threads_per_worker}
                    row["single_32_clients"] = compare(
                        url, theirs, singles, 32, args.repeat, args.client
                    )
                    if w == workers[0]:
                        b = compare(
                            url, theirs, batches, 8, args.repeat, args.client, torch_in_process
                        )
                        b["vs_torch_in_process"] = (
                            b["semflow"]["texts_per_s"] / b["in_process_texts_per_s"]
                        )
                        row["batch_8x32"] = b
                        if not args.compare_only:
                            row.update(
                                search_and_rss(url, procs[0], texts, n_points, n_rss, args.client)
                            )
                    out["workers"][str(w)] = row
        out["load_after"] = os.getloadavg()
    batch = out["workers"][str(workers[0])]["batch_8x32"]
    errors = sum(
        sum(r["errors"].values())
        for row in out["workers"].values()
        for part in ("single_32_clients", "batch_8x32")
        if part in row
        for r in (row[part].get("semflow"), row[part].get("peer"))
        if r
    )
    goals: dict = {
        "single_rps_goal": GOAL_SINGLE_RPS,
        "batch_goal": GOAL_BATCH,
        "batch_vs_torch_in_process": batch["vs_torch_in_process"],
        "errors": errors,
    }
    for w, row in out["workers"].items():  # the single-text goal at each worker count
        single = row["single_32_clients"]
        goals[f"single_rps_vs_peer_{w}w"] = single.get("rps_ratio")
        goals[f"single_p99_vs_peer_{w}w"] = single.get("p99_ratio")
        goals[f"met_{w}w"] = (
            single.get("rps_ratio", 0) >= GOAL_SINGLE_RPS
            and single.get("p99_ratio", 99) <= 1.0
            and batch["vs_torch_in_process"] >= GOAL_BATCH
            and errors == 0
        )
    out["goals"] = goals
    print(json.dumps(out, indent=2))


def search_and_rss(
    url: str, proc, texts: list[str], n_points: int, n_rss: int, client: str
) -> dict:
    """/search under 32 clients on the large index, and the server's RSS growth over it."""
    sq = [{"query": texts[i % len(texts)], "tenant": f"t{i % 10}"} for i in range(n_rss)]
    asyncio.run(load(url, "/search", sq[:200], 8, client))  # warm up (and fill the query cache)
    rss0 = rss_mb(proc)
    srch = asyncio.run(load(url, "/search", sq, 32, client))
    rss1 = rss_mb(proc)
    srch["points"] = n_points
    return {
        "search": srch,
        "rss_mb_before": rss0,
        "rss_mb_after": rss1,
        "rss_growth": (rss1 - rss0) / rss0,
    }


if __name__ == "__main__":
    main()
