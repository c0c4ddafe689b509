"""Stage `evaluate`: test-set metrics and the plots' data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from semflow.config import Settings
from semflow.training.common import (
    Paths,
    load_bundle_parts,
    load_features,
    read_split,
    write_json,
)
from semflow.training.params import PipelineParams


def evaluate(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Test-set metrics, plots data, and `metrics/evaluate.json`."""
    from semflow.models.metrics import classification_metrics, search_metrics
    from semflow.models.oos import oos_rows
    from semflow.models.openset import open_set_metrics
    from semflow.models.ranker import cosine_only, groups_ndcg, rank_groups

    k = params.evaluate.k
    x = load_features(paths)
    # The corpus is every labelled training document (train + val), as the index holds them.
    train = pd.concat([read_split(paths, "train"), read_split(paths, "val")], ignore_index=True)
    x["train"] = np.vstack([x["train"], x["val"]])
    test = read_split(paths, "test")
    clf, info, weights = load_bundle_parts(paths)
    # Explicit OOS examples (classifier.oos_label) are no class: scored apart, below.
    oos = oos_rows(test["label"].to_numpy(), params.classifier.oos_label)
    x_oos, test, x["test"] = x["test"][oos], test[~oos].reset_index(drop=True), x["test"][~oos]
    proba = clf.predict_proba(x["test"])
    pred = clf.classes_[proba.argmax(axis=1)]
    linear = clf.classes_[clf.linear_decision(x["test"]).argmax(axis=1)]
    y = test["label"].to_numpy()
    cm = classification_metrics(y.tolist(), pred.tolist())
    oos_scores = clf.oos_score(x["test"], proba)
    accepted = oos_scores <= info["threshold"]
    cls = {
        "accuracy": cm["accuracy"],
        "macro_f1": cm["macro_f1"],
        # The logistic regression alone: what the neighbour vote adds, on every run.
        "linear_accuracy": float((linear == y).mean()),
        "coverage": float(accepted.mean()) if len(y) else 0.0,
        "selective_accuracy": float((pred[accepted] == y[accepted]).mean())
        if accepted.any()
        else 0.0,
        "threshold": info["threshold"],
        "in_scope_accuracy": float((accepted & (pred == y)).mean()) if len(y) else 0.0,
    }
    if len(x_oos):  # the served model's own unknown detection
        cls["oos"] = open_set_metrics(
            oos_scores, pred == y, clf.oos_score(x_oos), info["threshold"]
        )
    search = search_metrics(x["test"], y.tolist(), x["train"], train["label"].tolist(), k)
    names = list(weights)
    groups = rank_groups(
        x["test"],
        test["text"].tolist(),
        y.tolist(),
        x["train"],
        train["text"].tolist(),
        train["label"].tolist(),
        names,
        params.ranker.candidates,
    )
    wv = np.array([weights[n] for n in names])
    metrics = {
        "classifier": cls,
        "search": search,
        "ranker": {
            f"ndcg@{k}": groups_ndcg(groups, wv, k),
            f"baseline_ndcg@{k}": groups_ndcg(groups, cosine_only(names), k),
        },
        "test_size": len(y),
    }
    from semflow.training.backend_check import compare_backends

    # the int8 quality guard's measurements (register judges them)
    metrics["backends"] = compare_backends(paths, settings, clf, x, test, train, k)
    # Unknown detection, measured on labels held out of training (semflow.models.openset).
    metrics["open_set"] = write_open_set(paths, params)
    write_json(paths.metrics / "evaluate.json", metrics)
    paths.plots.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": y, "predicted": pred}).to_csv(
        paths.plots / "confusion.csv", index=False
    )
    pd.DataFrame(
        {
            "label": list(cm["per_class_f1"]),
            "f1": [round(v, 4) for v in cm["per_class_f1"].values()],
        }
    ).to_csv(paths.plots / "per_class_f1.csv", index=False)
    return metrics


def write_open_set(paths: Paths, params: PipelineParams) -> dict[str, Any]:
    """The open-set metrics (the classifier stage's recipe on the base embedder's vectors,
    `evaluate.open_set.holdout_ratio` of the labels held out), the trade-off curve as a plot
    and an image."""
    from semflow.models.openset import evaluate_open_set, open_set_split, plot_tradeoff
    from semflow.training.stages.classifier import recipe
    from semflow.training.stages.embed import base_features_path

    with np.load(base_features_path(paths)) as z:
        base = {k: z[k] for k in z.files}
    y = {n: read_split(paths, n)["label"].to_numpy() for n in ("train", "val", "test")}
    oos_label = params.classifier.oos_label
    labels = sorted(set(y["train"]) - {oos_label})
    held = open_set_split(labels, params.evaluate.open_set.holdout_ratio, params.base.seed)
    metrics, curve = evaluate_open_set(base, y, held, recipe(params), oos_label)
    paths.plots.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curve).to_csv(paths.plots / "oos_tradeoff.csv", index=False)
    plot_tradeoff(curve, metrics, paths.plots / "oos_tradeoff.png")
    return metrics
