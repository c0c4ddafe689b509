"""In-process encode speed of the embedder backends (torch, onnx, onnx-int8) on Banking77 test
texts, all measured in this run, and how close int8 vectors stay to fp32. Prints one JSON
object.

    .venv/bin/python benchmarks/encode.py [--texts 512] [--single 100] [--repeat 3]

Three ways to encode: bulk, one `encode` call of all texts in batches of 32 (sync, the
pipeline; texts sorted by length, so little padding); batch32, calls of 32 texts each (a
batched request); single, one text per call. Backends take turns within each repeat, so a
busy neighbour slows them alike; the median repeat is reported. The exports are built in a
temporary SEMFLOW_HOME (`first_encode_s`: load plus export). onnx-int8 is also run at 1 and
2 intra-op threads (the default is the usable cores). The goal (issue 18, whose torch
reference is bulk at batch 32): onnx-int8 >= 2.5x torch texts/s in bulk.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnx", "onnx-int8")
GOAL = 2.5  # onnx-int8 texts/s over torch texts/s, batch 32
BATCH = 32


def test_texts(n: int) -> list[str]:
    """`n` Banking77 test texts, spread over the file (every label, every length)."""
    with (REPO / "data" / "banking77" / "test.csv").open() as fh:
        rows = [r["text"] for r in csv.DictReader(fh)]
    return rows[:: max(1, len(rows) // n)][:n]


def rate(fn: Callable[[], object], n: int) -> float:
    """Texts per second of one call of `fn` that encodes `n` texts."""
    time.sleep(0.2)  # the previous backend's idle threads stop spinning first
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--single", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="semflow-encode-") as home:
        print(json.dumps(measure(args, Path(home)), indent=2))


def measure(args: argparse.Namespace, home: Path) -> dict[str, object]:
    """Everything the benchmark prints, with the exports built under `home`."""
    import torch

    from semflow.config import load_settings
    from semflow.embedding import resolve_embedder, weights_version
    from semflow.onnx_backend import OnnxRunner, default_threads, export_dir

    load_before = round(os.getloadavg()[0], 2)  # a busy neighbour shows here
    texts, single = test_texts(args.texts), test_texts(args.single)
    embedders, first_encode_s = {}, {}
    for b in BACKENDS:
        emb = resolve_embedder(load_settings(home=home, backend=b), batch_size=BATCH)
        t0 = time.perf_counter()
        emb.encode(["warm up: loads the model, builds the export"])
        first_encode_s[b] = round(time.perf_counter() - t0, 2)
        embedders[b] = emb
    weights = weights_version(embedders["onnx"].version)
    int8_dir = export_dir(home, weights, "onnx-int8")
    runners = {n: OnnxRunner(int8_dir, embedders["onnx"].model_dir, threads=n) for n in (1, 2)}

    def modes(encode: Callable[[list[str]], np.ndarray]) -> dict[str, Callable[[], object]]:
        return {
            "bulk": lambda: encode(texts),
            "batch32": lambda: [encode(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)],
            "single": lambda: [encode([t]) for t in single],
        }

    sizes = {"bulk": len(texts), "batch32": len(texts), "single": len(single)}
    subjects = {b: modes(e.encode) for b, e in embedders.items()}
    for n, r in runners.items():
        subjects[f"int8_{n}_threads"] = modes(lambda x, r=r: r.encode(x, BATCH, True))
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for name, fns in subjects.items():
            for mode, fn in fns.items():
                runs.setdefault(f"{name}_{mode}", []).append(rate(fn, sizes[mode]))
    tps = {k: round(float(np.median(v)), 1) for k, v in runs.items()}

    vec = {b: embedders[b].encode(texts) for b in BACKENDS}
    int8_cos = (vec["onnx-int8"] * vec["onnx"]).sum(axis=1)
    fp32_cos = (vec["onnx"] * vec["torch"]).sum(axis=1)
    ratio = {
        f"{b}_{m}": round(tps[f"{b}_{m}"] / tps[f"torch_{m}"], 2)
        for b in BACKENDS[1:]
        for m in sizes
    }
    return {
        "texts": len(texts),
        "single_texts": len(single),
        "batch_size": BATCH,
        "repeat": args.repeat,
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "threads": {"torch": torch.get_num_threads(), "onnx": default_threads()},
        "texts_per_s": {k: v for k, v in tps.items() if not k.startswith("int8_")},
        "ratio_vs_torch": ratio,
        "int8_texts_per_s_by_threads": {
            str(n): {m: tps[f"int8_{n}_threads_{m}"] for m in sizes} for n in runners
        },
        "cosine_int8_vs_fp32": {
            "mean": round(float(int8_cos.mean()), 5),
            "min": round(float(int8_cos.min()), 5),
        },
        "cosine_onnx_vs_torch_min": round(float(fp32_cos.min()), 6),
        "first_encode_s": first_encode_s,
        "goal_int8_ratio": GOAL,
        "ok": ratio["onnx-int8_bulk"] >= GOAL,
    }


if __name__ == "__main__":
    main()
