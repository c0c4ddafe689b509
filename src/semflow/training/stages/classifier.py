"""Stage `classifier`: calibrated classifier, its out-of-scope score and unknown threshold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from semflow.config import Settings
from semflow.models.oos import OosRule
from semflow.training.common import Paths, load_features, read_split, write_json
from semflow.training.params import PipelineParams


def classifier(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    import joblib

    from semflow.models.oos import oos_rows

    x = load_features(paths)
    p = params.classifier
    y_train = read_split(paths, "train")["label"].to_numpy()
    y_val = read_split(paths, "val")["label"].to_numpy()
    # Explicit out-of-scope examples (classifier.oos_label) are never a class: training
    # drops them, validation hands them to the threshold rule.
    tr, va = oos_rows(y_train, p.oos_label), oos_rows(y_val, p.oos_label)
    res = recipe(params)(
        x["train"][~tr], y_train[~tr].tolist(), x["val"][~va], y_val[~va].tolist(), x["val"][va]
    )
    paths.classifier.mkdir(parents=True, exist_ok=True)
    joblib.dump(res.model, paths.classifier / "classifier.joblib")
    info = {
        "threshold": res.threshold,
        "temperature": res.temperature,
        "val_accuracy": res.val_accuracy,
        "val_coverage": res.val_coverage,
        "oos_score": p.oos_score,
        "memory": 0 if res.model.memory is None else len(res.model.memory),
    }
    if res.val_oos_recall is not None:  # validation held explicit OOS examples
        info["val_oos_recall"] = res.val_oos_recall
    write_json(paths.classifier / "classifier.json", info)
    write_json(paths.metrics / "classifier.json", info)
    return info


def recipe(params: PipelineParams) -> Callable[..., Any]:
    """`train(x_train, y_train, x_val, y_val, x_val_oos=None)` with params.yaml's classifier
    section: this stage's recipe, which the open-set evaluation trains again."""
    from semflow.models.classifier import NeighbourVote, train_classifier

    p = params.classifier

    def train(
        xt: np.ndarray,
        yt: list[str],
        xv: np.ndarray,
        yv: list[str],
        x_val_oos: np.ndarray | None = None,
    ) -> Any:
        return train_classifier(
            xt,
            yt,
            xv,
            yv,
            C=p.C,
            max_iter=p.max_iter,
            rule=oos_rule(params),
            refit_on_val=p.refit_on_val,
            vote=NeighbourVote(p.knn_k, p.knn_weight, p.knn_temperature),
            x_val_oos=x_val_oos,
            seed=params.base.seed,
        )

    return train


def oos_rule(params: PipelineParams) -> OosRule:
    """The OOS score and threshold rule of params.yaml's `classifier` section."""
    p = params.classifier
    return OosRule(p.oos_score, p.oos_knn_k, p.min_coverage, p.oos_recall)
