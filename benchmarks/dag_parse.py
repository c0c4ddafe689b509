"""DAG parse time: each file in dags/ parsed in a fresh interpreter with Airflow already
imported, against the goal (well under a second). Prints one JSON object.

    .venv/bin/python benchmarks/dag_parse.py [--repeat 3]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._load import int_options  # noqa: E402

DAGS = REPO / "dags"
GOAL_S = 1.0


def parse_seconds(path: Path) -> float:
    code = (
        "import time, runpy, airflow.sdk; t = time.perf_counter(); "
        f"runpy.run_path({str(path)!r}); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = int_options(__doc__, repeat=3)
    files = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
    best = {p.name: min(parse_seconds(p) for _ in range(args.repeat)) for p in files}
    print(
        json.dumps(
            {
                "parse_s": {k: round(v, 3) for k, v in best.items()},
                "max_parse_s": round(max(best.values()), 3),
                "goal_s": GOAL_S,
                "ok": max(best.values()) < GOAL_S,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
