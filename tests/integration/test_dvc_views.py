"""DVC's own views of the committed pipeline: `dvc plots show` renders the confusion matrix and
the per-class F1 as HTML, `dvc metrics diff` and `dvc exp show` read dvc.lock and the metrics.
Nothing is reproduced: they run on the checkout as committed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import run_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).with_name("dvc"))


def _dvc(*args: str, cwd: Path = REPO) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["DVC_NO_ANALYTICS"] = "1"
    proc = run_tree([DVC, *args], cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout


def test_plots_show_renders_both_plots_as_html(tmp_path: Path) -> None:
    _dvc("plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    for name in ("plots/confusion.csv", "plots/per_class_f1.csv"):
        assert name in html, name
    # The data is inlined in the vega-lite specs: every label of the per-class table is in.
    labels = pd.read_csv(REPO / "plots" / "per_class_f1.csv")["label"]
    assert all(str(label) in html for label in labels)
    assert '"mark": {"type": "rect"' in html or '"mark": "rect"' in html  # confusion template
    assert '"bar"' in html  # bar_horizontal template


def test_metrics_diff_and_exp_show_read_the_committed_pipeline() -> None:
    evaluate = json.loads((REPO / "metrics" / "evaluate.json").read_text())
    diff = json.loads(_dvc("metrics", "diff", "--all", "--json"))
    accuracy = diff["metrics/evaluate.json"]["classifier.accuracy"]
    assert accuracy["new"] == evaluate["classifier"]["accuracy"]

    rows = json.loads(_dvc("exp", "show", "--json"))
    workspace = next(r for r in rows if r["rev"] == "workspace")["data"]
    shown = workspace["metrics"]["metrics/evaluate.json"]["data"]
    assert shown["classifier"]["accuracy"] == evaluate["classifier"]["accuracy"]
    assert workspace["params"]["params.yaml"]["data"]["finetune"]["epochs"] > 0
    # register's deps include the module that draws the evaluation's pictures into its run
    assert "src/semflow/training/figures.py" in workspace["deps"]
