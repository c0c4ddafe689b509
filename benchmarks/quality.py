"""Full Banking77 quality run: the training pipeline on the whole sample, JSON vs the baseline.

    .venv/bin/python benchmarks/quality.py [--workdir DIR] [-S key=value ...]
    .venv/bin/python benchmarks/quality.py search [...]   # search modes only, minutes

`search` runs benchmarks/search_quality.py instead: nDCG@10 / MRR@10 of dense, sparse and
hybrid search on Banking77 and on the keyword-heavy set, and what sparse vectors cost sync.

Runs every stage (sync into a fresh home, validate, prepare, fine-tune, embed, classifier,
ranker, evaluate, register) in a temporary work dir, times each stage and prints the test
metrics next to the frozen-MiniLM baseline and the targets of issue 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

BASELINE = {
    "classifier.accuracy": 0.9295,
    "search.ndcg@10": 0.880,
    "search.precision@10": 0.868,
    "search.mrr@10": 0.942,
}
TARGETS = {"classifier.accuracy": 0.940, "search.ndcg@10": 0.930}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["search"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.search_quality import main as search_main

        return search_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="key=value")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="semflow-quality-"))
    os.environ["SEMFLOW_HOME"] = str(work / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semflow.config import get_settings
    from semflow.training import STAGES, Paths, flat_metrics, load_pipeline_params, run_stage

    get_settings.cache_clear()
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    params = load_pipeline_params(overrides=overrides)
    paths, s = Paths(work / "pipeline"), get_settings()
    seconds: dict[str, float] = {}
    results = {}
    t_all = time.perf_counter()
    for stage in STAGES:
        t0 = time.perf_counter()
        results[stage] = run_stage(stage, paths, params, s)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        print(f"{stage}: {seconds[stage]}s", file=sys.stderr, flush=True)
    metrics = flat_metrics(json.loads((paths.metrics / "evaluate.json").read_text()))
    out = {
        "benchmark": "quality",
        "cpu_count": os.cpu_count(),
        "overrides": overrides,
        "seconds": seconds,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "metrics": metrics,
        "baseline": BASELINE,
        "targets": TARGETS,
        "targets_met": {k: metrics.get(k, 0.0) >= v for k, v in TARGETS.items()},
        "ranker_beats_cosine": metrics["ranker.ndcg@10"] > metrics["ranker.baseline_ndcg@10"],
        "finetune": results["finetune"],
        "register": results["register"],
        "workdir": str(work),
    }
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
