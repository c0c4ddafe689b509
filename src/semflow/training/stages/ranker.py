"""Stage `ranker`: learn the ranker's weights on validation queries."""

from __future__ import annotations

from typing import Any

from semflow.config import Settings
from semflow.errors import SettingsError
from semflow.training.common import Paths, load_features, read_split, write_json
from semflow.training.params import PipelineParams


def ranker(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Learn ranker weights on validation queries over training candidates."""
    from semflow.models.ranker import cosine_only, fit_weights, groups_ndcg, rank_groups

    p = params.ranker
    if not p.features or p.features[0] != "semantic":
        raise SettingsError("ranker.features must start with 'semantic'")
    if not p.enabled:
        weights = dict(zip(p.features, cosine_only(p.features).tolist(), strict=True))
        info = {"weights": weights, "enabled": False}
        write_json(paths.ranker, info)
        return info
    x = load_features(paths)
    train, val = read_split(paths, "train"), read_split(paths, "val")
    n = min(p.max_queries, len(val))
    groups = rank_groups(
        x["val"][:n],
        val["text"].tolist()[:n],
        val["label"].tolist()[:n],
        x["train"],
        train["text"].tolist(),
        train["label"].tolist(),
        p.features,
        p.candidates,
    )
    weights, score = fit_weights(groups, p.features, k=p.k, step=p.step)
    info = {
        "weights": weights,
        "val_ndcg": score,
        "val_cosine_ndcg": groups_ndcg(groups, cosine_only(p.features), p.k),
    }
    write_json(paths.ranker, info)
    return info
