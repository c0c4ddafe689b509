"""Redraw the README's pictures from the committed pipeline outputs.

    .venv/bin/python scripts/plots.py      # docs/images/confusion_matrix.png, per_class_f1.png

The same drawing code as the register stage's MLflow artefacts (semflow.training.figures),
from plots/confusion.csv and plots/per_class_f1.csv, which `dvc repro` writes. Run it after a
re-recorded pipeline; never edit the PNGs by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plots", type=Path, default=REPO / "plots", help="the plots CSVs")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = ap.parse_args(argv)
    from semflow.training.figures import CONFUSION_CSV, PER_CLASS_F1_CSV, write_figures

    missing = [n for n in (CONFUSION_CSV, PER_CLASS_F1_CSV) if not (args.plots / n).is_file()]
    if missing:
        print(f"plots: {', '.join(missing)} missing in {args.plots}; run `dvc repro` first")
        return 2
    for name, path in write_figures(args.plots, args.out).items():
        print(f"plots: {name} -> {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
