"""Stage `classifier`: calibrated classifier and unknown threshold."""

from __future__ import annotations

from typing import Any

from semflow.config import Settings
from semflow.training.common import Paths, load_features, read_split, write_json
from semflow.training.params import PipelineParams


def classifier(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    import joblib

    from semflow.models.classifier import NeighbourVote, train_classifier

    x = load_features(paths)
    p = params.classifier
    res = train_classifier(
        x["train"],
        read_split(paths, "train")["label"].tolist(),
        x["val"],
        read_split(paths, "val")["label"].tolist(),
        C=p.C,
        max_iter=p.max_iter,
        target_precision=p.target_precision,
        refit_on_val=p.refit_on_val,
        vote=NeighbourVote(p.knn_k, p.knn_weight, p.knn_temperature),
        seed=params.base.seed,
    )
    paths.classifier.mkdir(parents=True, exist_ok=True)
    joblib.dump(res.model, paths.classifier / "classifier.joblib")
    info = {
        "threshold": res.threshold,
        "temperature": res.temperature,
        "val_accuracy": res.val_accuracy,
        "val_coverage": res.val_coverage,
        "memory": 0 if res.model.memory is None else len(res.model.memory),
    }
    write_json(paths.classifier / "classifier.json", info)
    write_json(paths.metrics / "classifier.json", info)
    return info
