"""Helpers shared by the benchmarks: their integer command-line options, and for the serving
ones Banking77 texts, server RSS, a closed-loop mixed-traffic generator that runs for a
duration, per-window statistics and a probe poller.

The load generator follows /work/shared/bench/loadgen.py: C clients on one httpx
AsyncClient, each sending its next request as soon as the previous one answered; every
answer is recorded (end time, route, status or exception name, latency), so a run can be
sliced afterwards into the windows around a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
Request = tuple[str, dict[str, Any]]  # (path, JSON body)


def int_options(doc: str, **defaults: int) -> argparse.Namespace:
    """Parse the command line of a benchmark whose options are all `--name N` integers; the
    first line of its docstring `doc` is the description `--help` shows."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        ap.add_argument(f"--{name}", type=int, default=default)
    return ap.parse_args()


def latency_ms(latencies: Sequence[float]) -> dict[str, float]:
    """p50 and p99 of latencies given in milliseconds."""
    a = np.asarray(latencies)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def best_ratio(before: Sequence[float], now: Sequence[float]) -> float:
    """The best (smallest) of the reference's passes over the best of the new code's: a pass
    slowed by the shared machine's load counts for neither."""
    return round(min(before) / min(now), 2)


def banking77_texts() -> list[str]:
    with (REPO / "data" / "banking77" / "train.csv").open() as fh:
        return [r["text"] for r in csv.DictReader(fh)]


def rss_mb(proc) -> float:
    """RSS of a process and all its children (the whole `bentoml serve` tree), MiB."""
    import psutil

    p = psutil.Process(proc.pid)
    return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20


class Rec(NamedTuple):
    t: float  # end time, seconds since the run's t0
    route: str
    status: str  # "200", "429", ... or the exception name ("ReadTimeout")
    ms: float


def mixed(
    texts: Sequence[str], routes: Sequence[str], tenant: str = "bank"
) -> Callable[[int], Request]:
    """Request number i of a round-robin mix of `routes` over `texts`."""

    def make(i: int) -> Request:
        route = routes[i % len(routes)]
        k = 1 + i % 4
        some = [texts[(i * 7 + j) % len(texts)] for j in range(k)]
        body: dict[str, Any] = {
            "/embed": {"texts": some},
            "/search": {"query": some[0], "tenant": tenant, "top_k": 5},
            "/classify": {"texts": some, "top_k": 2, "tenant": tenant},
            "/similarity": {"pairs": [[some[0], texts[(i + 1) % len(texts)]]]},
        }[route]
        return route, body

    return make


async def post(client, url: str, path: str, body: dict[str, Any], t0: float) -> Rec:
    """One POST; a transport error or client timeout is recorded by its exception name."""
    start = time.perf_counter()
    try:
        status = str((await client.post(f"{url}{path}", json=body)).status_code)
    except Exception as err:
        status = type(err).__name__
    end = time.perf_counter()
    return Rec(end - t0, path, status, (end - start) * 1000)


async def closed_loop(
    url: str,
    make: Callable[[int], Request],
    clients: int,
    t0: float,
    until: float,
    side: Sequence[Callable[[Any], Awaitable[Any]]] = (),
    timeout_s: float = 30.0,
) -> tuple[list[Rec], list[Any]]:
    """`clients` workers send `make(i)` back to back until perf_counter() >= `until`.

    `side` coroutines get the shared client and run alongside (fault schedules, extra
    requests); their results come back second."""
    import httpx

    from tests.service.serve_helpers import ADMIN

    recs: list[Rec] = []
    counter = itertools.count()
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(headers=ADMIN, timeout=timeout_s, limits=limits) as c:

        async def worker() -> None:
            while time.perf_counter() < until:
                path, body = make(next(counter))
                recs.append(await post(c, url, path, body, t0))

        out = await asyncio.gather(*(worker() for _ in range(clients)), *(s(c) for s in side))
    return recs, list(out[clients:])


def summary(recs: Sequence[Rec], lo: float = 0.0, hi: float = float("inf")) -> dict[str, Any]:
    """Counts per status, throughput and p50/p99 of the 200 answers ending in [lo, hi)."""
    win = [r for r in recs if lo <= r.t < hi]
    hi = min(hi, max((r.t for r in win), default=lo))
    span = max(hi - lo, 1e-9)
    ok = np.array([r.ms for r in win if r.status == "200"])
    return {
        "requests": len(win),
        "codes": dict(sorted(Counter(r.status for r in win).items())),
        "rps": round(len(win) / span, 1),
        "ok_rps": round(len(ok) / span, 1),
        "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 1) if len(ok) else None,
    }


def count_5xx(recs: Sequence[Rec]) -> int:
    return sum(r.status.startswith("5") for r in recs)


class Probes(threading.Thread):
    """Polls /livez, /readyz and /health every `every_s` seconds in a side thread; keeps
    each answer (time, path, status) and /health's cache status."""

    PATHS = ("/livez", "/readyz", "/health")

    def __init__(self, url: str, t0: float, every_s: float = 0.5, timeout_s: float = 5.0):
        super().__init__(daemon=True)
        self.url, self.t0, self.every_s, self.timeout_s = url, t0, every_s, timeout_s
        self.seen: list[tuple[float, str, str]] = []
        self.cache: list[tuple[float, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as c:
            while not self._halt.is_set():
                for path in self.PATHS:
                    try:
                        r = c.get(f"{self.url}{path}")
                        status = str(r.status_code)
                        if path == "/health" and r.status_code == 200:
                            dep = r.json()["dependencies"].get("cache", {})
                            self.cache.append((self.now(), dep.get("status", "?")))
                    except Exception as err:
                        status = type(err).__name__
                    self.seen.append((self.now(), path, status))
                self._halt.wait(self.every_s)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def stop(self) -> dict[str, Any]:
        """Stop polling; statuses per path and /health's cache status changes over time."""
        self._halt.set()
        self.join()
        per_path = {p: Counter(s for _, q, s in self.seen if q == p) for p in self.PATHS}
        changes = [c for i, c in enumerate(self.cache) if i == 0 or c[1] != self.cache[i - 1][1]]
        return {
            "codes": {p: dict(c) for p, c in per_path.items()},
            "all_200": all(s == "200" for _, _, s in self.seen) and bool(self.seen),
            "cache_status_changes": [[round(t, 1), s] for t, s in changes],
        }
