"""The open-set evaluation (Zhang et al. 2021's BANKING77-OOS protocol): a seeded subset of
labels is held out of training as out-of-scope; a classifier trained on the rest is scored on
the test split's in-scope texts and on the held-out labels' texts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semflow.errors import SettingsError
from semflow.models.oos import oos_rows


def open_set_split(labels: Sequence[str], ratio: float, seed: int) -> list[str]:
    """The labels treated as out-of-scope: `ratio` of them (at least one, and two stay in
    scope), drawn with `seed`; sorted. Zhang et al. hold out 27 of Banking77's 77 (0.35)."""
    uniq = sorted(set(labels))
    if len(uniq) < 3:
        raise SettingsError(
            f"the open-set evaluation needs at least 3 labels (the data has {len(uniq)})"
        )
    n = min(max(1, round(ratio * len(uniq))), len(uniq) - 2)
    rng = np.random.default_rng(seed)
    return sorted(str(v) for v in rng.choice(uniq, n, replace=False))


def open_set_metrics(
    in_scope: np.ndarray, correct: np.ndarray, oos: np.ndarray, threshold: float
) -> dict[str, float]:
    """Test metrics of OOS scores: in-scope texts (`correct`: top label right) vs OOS texts.

    in_scope_accuracy counts an in-scope text right when it is accepted with the right
    label; oos_recall/oos_precision treat "unknown" as the OOS class; AUROC ranks OOS above
    in-scope; fpr@95tpr is the share of OOS texts accepted where 95% of in-scope ones are.
    """
    from sklearn.metrics import roc_auc_score

    si, so = np.asarray(in_scope, dtype=np.float64), np.asarray(oos, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    accepted = si <= threshold
    rejected_oos = int((so > threshold).sum())
    rejected = rejected_oos + int((~accepted).sum())
    y = np.r_[np.zeros(len(si)), np.ones(len(so))]
    t95 = float(np.quantile(si, 0.95, method="higher"))
    return {
        "threshold": float(threshold),
        "in_scope_accuracy": float((accepted & ok).mean()),
        "in_scope_coverage": float(accepted.mean()),
        "closed_set_accuracy": float(ok.mean()),
        "oos_recall": rejected_oos / len(so),
        "oos_precision": rejected_oos / rejected if rejected else 0.0,
        "auroc": float(roc_auc_score(y, np.r_[si, so])),
        "fpr@95tpr": float((so <= t95).mean()),
    }


def tradeoff_curve(
    in_scope: np.ndarray, correct: np.ndarray, oos: np.ndarray, points: int = 101
) -> list[dict[str, float]]:
    """In-scope accuracy and OOS recall at `points` thresholds spread over the scores."""
    si, so = np.asarray(in_scope, dtype=np.float64), np.asarray(oos, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    grid = np.unique(np.quantile(np.r_[si, so], np.linspace(0, 1, points)))
    return [
        {
            "threshold": round(float(t), 6),
            "in_scope_accuracy": round(float(((si <= t) & ok).mean()), 6),
            "oos_recall": round(float((so > t).mean()), 6),
        }
        for t in grid
    ]


def evaluate_open_set(
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    held_out: Sequence[str],
    train: Any,
    oos_label: str | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Open-set metrics and trade-off curve of `held_out` labels.

    `x`/`y`: embeddings and labels of the train, val and test splits; `train(x_train,
    y_train, x_val, y_val, x_val_oos)` returns a ClassifierResult (the pipeline's own
    recipe). Held-out texts of the validation split are not handed to the threshold rule: on
    data without OOS examples the served model never sees one either. Explicit OOS examples
    (`oos_label`) are: in validation as the served model's rule gets them, in test as
    out-of-scope texts beside the held-out labels'.
    """
    held = np.asarray(sorted(held_out))
    ys = {k: np.asarray(v) for k, v in y.items()}
    explicit = {k: oos_rows(v, oos_label) for k, v in ys.items()}
    known = {k: ~np.isin(v, held) & ~explicit[k] for k, v in ys.items()}
    if not (~known["test"]).any() or not known["test"].any():
        raise SettingsError("the open-set evaluation needs in-scope and held-out test texts")
    res = train(
        x["train"][known["train"]],
        ys["train"][known["train"]].tolist(),
        x["val"][known["val"]],
        ys["val"][known["val"]].tolist(),
        x["val"][explicit["val"]],
    )
    clf, xt, yt, kt = res.model, x["test"], ys["test"], known["test"]
    proba = clf.predict_proba(xt)
    scores = clf.oos_score(xt, proba)
    correct = clf.classes_[proba.argmax(axis=1)][kt] == yt[kt]
    metrics = open_set_metrics(scores[kt], correct, scores[~kt], res.threshold)
    metrics.update(held_out=len(held), in_scope_test=int(kt.sum()), oos_test=int((~kt).sum()))
    return metrics, tradeoff_curve(scores[kt], correct, scores[~kt])


def plot_tradeoff(curve: list[dict[str, float]], at: dict[str, Any], path: Path) -> Path:
    """The curve of in-scope accuracy against OOS recall, the operating threshold marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot([c["oos_recall"] for c in curve], [c["in_scope_accuracy"] for c in curve])
    ax.scatter([at["oos_recall"]], [at["in_scope_accuracy"]], color="red", zorder=3)
    ax.annotate(f"threshold {at['threshold']:.3f}", (at["oos_recall"], at["in_scope_accuracy"]))
    ax.set_xlabel("OOS recall (held-out labels)")
    ax.set_ylabel("in-scope accuracy")
    ax.set_title(f"unknown detection, AUROC {at['auroc']:.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version string: same bytes each run
    plt.close(fig)
    return path
