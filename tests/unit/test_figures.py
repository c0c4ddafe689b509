"""The evaluation's pictures (semflow.training.figures) and the README's copies of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from semflow.training.figures import (
    CONFUSION_PNG,
    PER_CLASS_F1_PNG,
    metrics_table,
    write_figures,
)

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _plots(tmp: Path) -> Path:
    d = tmp / "plots"
    d.mkdir()
    pd.DataFrame(
        {"actual": ["a", "a", "b", "c", "c"], "predicted": ["a", "b", "b", "c", "a"]}
    ).to_csv(d / "confusion.csv", index=False)
    pd.DataFrame({"label": ["a", "b", "c"], "f1": [0.5, 0.8, 0.67]}).to_csv(
        d / "per_class_f1.csv", index=False
    )
    return d


def test_write_figures_draws_both_pngs_the_same_every_time(tmp_path: Path) -> None:
    plots = _plots(tmp_path)
    first = write_figures(plots, tmp_path / "one")
    second = write_figures(plots, tmp_path / "two")
    assert set(first) == {CONFUSION_PNG, PER_CLASS_F1_PNG}
    for name, path in first.items():
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5_000, name
        assert data == second[name].read_bytes(), f"{name} is not deterministic"


def test_metrics_table_has_a_row_per_metric() -> None:
    table = metrics_table({"classifier": {"accuracy": 0.9, "macro_f1": 0.8}, "test_size": 10})
    assert table.to_dict("records") == [
        {"section": "classifier", "metric": "accuracy", "value": 0.9},
        {"section": "classifier", "metric": "macro_f1", "value": 0.8},
        {"section": "", "metric": "test_size", "value": 10.0},
    ]


def test_metrics_table_reads_the_nested_and_named_sections_of_evaluate_json() -> None:
    """evaluate.json holds deeper sections (the int8 guard's `backends`) and names beside the
    numbers: every number is a row under its path, a name is no metric."""
    evaluated = {
        "backends": {"pipeline": "torch", "fp32": {"classifier": {"accuracy": 0.93}}},
        "open_set": {"auroc": 0.91, "held_out": 27},
    }
    assert metrics_table(evaluated).to_dict("records") == [
        {"section": "backends", "metric": "fp32.classifier.accuracy", "value": 0.93},
        {"section": "open_set", "metric": "auroc", "value": 0.91},
        {"section": "open_set", "metric": "held_out", "value": 27.0},
    ]


def test_readme_pictures_are_what_scripts_plots_draws_from_the_committed_csvs(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plots.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (CONFUSION_PNG, PER_CLASS_F1_PNG):
        committed = REPO / "docs" / "images" / name
        assert committed.stat().st_size < 300_000, f"{committed} is too large for the repo"
        assert (tmp_path / name).read_bytes() == committed.read_bytes(), (
            f"{committed} differs from what scripts/plots.py draws: run it and commit the result"
        )


def test_plots_script_says_what_is_missing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plots.py"), "--plots", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "confusion.csv, per_class_f1.csv missing" in proc.stdout
