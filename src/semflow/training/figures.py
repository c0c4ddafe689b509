"""Pictures of an evaluation: the confusion matrix and the per-class F1 as PNGs.

Drawn (matplotlib, Agg, no pyplot state) from the plots CSVs the evaluate stage writes
(`plots/confusion.csv`: actual, predicted; `plots/per_class_f1.csv`: label, f1). The register
stage logs them with the metrics tables to its MLflow run (`log_evaluation`), and
`scripts/plots.py` redraws the README's copies from the committed CSVs with the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from semflow.training.common import flatten

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from semflow.training.common import Paths

CONFUSION_CSV = "confusion.csv"
PER_CLASS_F1_CSV = "per_class_f1.csv"
CONFUSION_PNG = "confusion_matrix.png"
PER_CLASS_F1_PNG = "per_class_f1.png"
ARTIFACT_DIR = "evaluation"  # where the run keeps them in MLflow


def confusion_figure(confusion_csv: Path) -> Figure:
    """Row-normalised confusion matrix (each row: where one true label's texts went)."""
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    df = pd.read_csv(confusion_csv, dtype=str)
    labels = sorted(set(df["actual"]) | set(df["predicted"]))
    counts = pd.crosstab(df["actual"], df["predicted"]).reindex(
        index=labels, columns=labels, fill_value=0
    )
    m = counts.to_numpy(dtype=float)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    # Room for the tick labels (Banking77 intents run to 40 characters) at any label count.
    side = min(max(8.0, 0.13 * n + 2.5), 13.0)
    # Long label lists get small ticks: 77 Banking77 intents must stay readable at 13 in.
    font = 8 if n <= 20 else max(3.5, 520 / (n * 8))
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.add_subplot()
    # A square-root-like scale: a 3% confusion must show next to a 97% diagonal.
    norm = PowerNorm(0.4, vmin=0, vmax=1)
    im = ax.imshow(m, cmap="Blues", norm=norm, interpolation="nearest")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    accuracy = float((df["actual"] == df["predicted"]).mean()) if len(df) else 0.0
    ax.set_title(f"Confusion matrix ({len(df)} test texts, accuracy {accuracy:.3f})")
    fig.colorbar(im, ax=ax, shrink=0.6, label="share of the actual label")
    return fig


def per_class_f1_figure(per_class_csv: Path) -> Figure:
    """Horizontal bars of F1 per label, worst at the top, with the macro average marked."""
    from matplotlib.figure import Figure

    df = pd.read_csv(per_class_csv).sort_values("f1", ascending=False)
    n = len(df)
    fig = Figure(figsize=(7.5, min(max(3.0, 0.16 * n + 1.2), 14.0)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(n), df["f1"], color="#4c72b0", height=0.75)
    ax.set_yticks(range(n), df["label"].astype(str), fontsize=8 if n <= 30 else 6)
    macro = float(df["f1"].mean()) if n else 0.0
    ax.axvline(macro, color="#c44e52", linestyle="--", linewidth=1)
    ax.set_xlim(max(0.0, float(df["f1"].min()) - 0.05) if n else 0.0, 1.0)
    ax.set_xlabel("F1 on the test split")
    ax.set_title(f"Per-class F1 ({n} labels, dashed: macro F1 {macro:.3f})")
    ax.margins(y=0.005)
    return fig


def write_figures(plots_dir: Path, out_dir: Path, dpi: int = 100) -> dict[str, Path]:
    """Draw both PNGs from the CSVs in `plots_dir` into `out_dir`; name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {
        CONFUSION_PNG: confusion_figure(plots_dir / CONFUSION_CSV),
        PER_CLASS_F1_PNG: per_class_f1_figure(plots_dir / PER_CLASS_F1_CSV),
    }
    written = {}
    for name, fig in drawn.items():
        # No timestamp in the PNG: the same CSV gives the same bytes (the README's copies).
        fig.savefig(out_dir / name, dpi=dpi, metadata={"Software": None})
        written[name] = out_dir / name
    return written


def metrics_table(metrics: dict) -> pd.DataFrame:
    """evaluate.json as rows of (section, metric, value), the table MLflow shows; nested
    sections (`backends.fp32.classifier.accuracy`) keep their path in the metric's name."""
    rows = []
    for key, value in flatten(metrics).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # names and verdict labels, not metrics
        section, name = key.split(".", 1) if "." in key else ("", key)
        rows.append((section, name, float(value)))
    return pd.DataFrame(rows, columns=["section", "metric", "value"])


def log_evaluation(paths: Paths) -> list[str]:
    """Log both PNGs, the metrics table and the per-class F1 table to the active MLflow
    run, under `evaluation/`; the artifact paths."""
    import tempfile

    import mlflow

    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in write_figures(paths.plots, Path(tmp)):
            mlflow.log_artifact(str(Path(tmp) / name), artifact_path=ARTIFACT_DIR)
            logged.append(f"{ARTIFACT_DIR}/{name}")
    metrics = json.loads((paths.metrics / "evaluate.json").read_text())
    tables = {
        "metrics.json": metrics_table(metrics),
        "per_class_f1.json": pd.read_csv(paths.plots / PER_CLASS_F1_CSV),
    }
    for name, table in tables.items():
        mlflow.log_table(table, artifact_file=f"{ARTIFACT_DIR}/{name}")
        logged.append(f"{ARTIFACT_DIR}/{name}")
    return logged
