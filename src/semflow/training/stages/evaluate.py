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
    from semflow.models.ranker import cosine_only, groups_ndcg, rank_groups

    k = params.evaluate.k
    x = load_features(paths)
    # The corpus is every labelled training document (train + val), as the index holds them.
    train = pd.concat([read_split(paths, "train"), read_split(paths, "val")], ignore_index=True)
    x["train"] = np.vstack([x["train"], x["val"]])
    test = read_split(paths, "test")
    clf, info, weights = load_bundle_parts(paths)
    proba = clf.predict_proba(x["test"])
    pred = clf.classes_[proba.argmax(axis=1)]
    linear = clf.classes_[clf.linear_decision(x["test"]).argmax(axis=1)]
    y = test["label"].to_numpy()
    cm = classification_metrics(y.tolist(), pred.tolist())
    accepted = proba.max(axis=1) >= info["threshold"]
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
    }
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
