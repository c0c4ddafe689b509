"""`semflow index rebuild` against the full refresh it spares, in one run. Prints one JSON object.

A home holding a full sync of `--docs` Banking77 train documents (repeated and tagged past
10,003) is built with the real embedder (SEMFLOW_BACKEND picks what runs it). Then, on that
home, in alternating order (refresh, rebuild, rebuild, refresh): a full refresh of the source
(`run_sync(full_refresh=True)`: every document read and embedded again, by an embedder
without a cache, its partitions' saved vectors removed first: an index grown by many small
syncs has none saved for a full snapshot's partitions) and `rebuild_live` (the live generation rewritten from its own vectors and
texts). Both publish a fresh generation of the same points.

Usage: python benchmarks/rebuild.py [--docs 20000]
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

import pandas as pd

from benchmarks._load import int_options
from benchmarks.sync import _mapping, _write_corpus
from semflow.app import Services
from semflow.config import SAMPLE_DIR, load_settings


def main() -> None:
    args = int_options(__doc__, docs=20_000)
    from semflow.embedding import resolve_embedder
    from semflow.index.rebuild import rebuild_live
    from semflow.sources import FileSource
    from semflow.sync import run_sync

    train = pd.read_csv(SAMPLE_DIR / "train.csv")
    tmp = Path(tempfile.mkdtemp(prefix="semflow-rebuild-"))
    out: dict[str, Any] = {
        "docs": args.docs,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_start": round(os.getloadavg()[0], 1),
    }
    try:
        settings = load_settings(home=tmp / "home", sync_partition_size=10_000)
        _write_corpus(tmp / "docs.parquet", train.text.tolist(), train.category.tolist(), args.docs)
        embedder = resolve_embedder(settings)  # no cache: a refresh embeds every document
        svc = Services.from_settings(settings, embedder=embedder)
        source = FileSource("bench", tmp / "docs.parquet", _mapping())
        t = time.perf_counter()
        run_sync(source, svc)
        out["first_sync_s"] = round(time.perf_counter() - t, 2)
        out["embedder"] = embedder.version
        timings: dict[str, list[float]] = {"full_refresh_s": [], "rebuild_s": []}
        for step in ("full_refresh_s", "rebuild_s", "rebuild_s", "full_refresh_s"):
            t = time.perf_counter()
            if step == "rebuild_s":
                report = rebuild_live(svc.store)
                assert report.points == args.docs, report
            else:
                for saved in (tmp / "home").rglob("vectors"):
                    shutil.rmtree(saved)
                result = run_sync(source, svc, full_refresh=True)
                assert result.counts["indexed"] == args.docs, result.counts
            timings[step].append(round(time.perf_counter() - t, 2))
        out.update(timings)
        out["ratio_full_refresh_over_rebuild"] = round(
            min(timings["full_refresh_s"]) / min(timings["rebuild_s"]), 2
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 1)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
