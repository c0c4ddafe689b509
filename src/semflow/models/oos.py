"""Out-of-scope ("unknown") detection: the OOS score and its threshold rule.

The score is calibrated on the in-scope validation texts: `oos_score(x)` is the fraction of
them that look more in-scope than `x` (0 = as typical as the most typical one, 1 = less
typical than every one of them). A threshold of `c` on that scale therefore keeps about
`c` of the in-scope validation texts, whatever embedder or raw score is underneath.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from semflow.errors import SettingsError
from semflow.models.metrics import topk_similar

# The raw in-scope score under the calibrated one (higher = more in-scope):
# probability: the classifier's top calibrated probability (what the threshold used before);
# knn: the mean cosine of the `k` most similar training texts (the classifier's memory);
# combined: the sum of both, each standardised on the in-scope validation texts.
OosScore = Literal["probability", "knn", "combined"]


@dataclass(frozen=True)
class OosRule:
    """How the OOS score and its threshold are chosen (params.yaml `classifier.oos_*`)."""

    score: OosScore
    k: int  # neighbours of the knn score
    min_coverage: float  # share of in-scope validation texts the threshold keeps, at least
    oos_recall: float | None  # with OOS validation examples: the share to reject

    def __post_init__(self) -> None:
        if self.k < 1:
            raise SettingsError(f"classifier.oos_knn_k must be >= 1, got {self.k}")
        if not 0 < self.min_coverage <= 1:
            raise SettingsError(
                f"classifier.min_coverage must be in (0, 1], got {self.min_coverage}"
            )
        if self.oos_recall is not None and not 0 < self.oos_recall <= 1:
            raise SettingsError(f"classifier.oos_recall must be in (0, 1], got {self.oos_recall}")


def _raw_parts(
    clf: Any, x: np.ndarray, kind: OosScore, k: int, proba: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The raw in-scope scores `kind` needs of `x` under `clf` (a CalibratedClassifier)."""
    p = clf.predict_proba(x) if proba is None else proba
    parts = {"probability": np.asarray(p).max(axis=1)}
    if kind != "probability":  # the memory search only where the score reads it
        _, sims = topk_similar(np.asarray(x, dtype=np.float32), clf.memory, k)
        parts["knn"] = sims.astype(np.float64).mean(axis=1)
    return parts


@dataclass
class OosDetector:
    """The OOS score of one classifier: raw score kind, its standardisation and the in-scope
    validation scores that calibrate it (sorted, ascending)."""

    kind: OosScore
    k: int
    reference: np.ndarray  # the raw score of each in-scope validation text, ascending
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # mean, std per part

    def raw(self, clf: Any, x: np.ndarray, proba: np.ndarray | None = None) -> np.ndarray:
        """The raw in-scope score (higher = more in-scope); `proba`: already computed."""
        parts = _raw_parts(clf, x, self.kind, self.k, proba)
        if self.kind != "combined":
            return parts[self.kind]
        return np.sum([(parts[n] - m) / s for n, (m, s) in self.stats.items()], axis=0)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores -> OOS scores in [0, 1]: the fraction of the reference above each."""
        ref = self.reference
        above = len(ref) - np.searchsorted(ref, raw, side="right")
        return np.asarray(above / len(ref), dtype=np.float64)

    def score(self, clf: Any, x: np.ndarray, proba: np.ndarray | None = None) -> np.ndarray:
        """OOS scores `[n]` of normalised embeddings (higher = more out-of-scope)."""
        return self.calibrate(self.raw(clf, x, proba))


def fit_detector(
    clf: Any, x_val: np.ndarray, rule: OosRule, proba: np.ndarray | None = None
) -> OosDetector:
    """The detector of `clf` calibrated on in-scope validation embeddings `x_val` (texts the
    classifier did not train on, so their kNN similarities look like new texts')."""
    kind, k = rule.score, rule.k
    if kind != "probability" and clf.memory is None:
        raise SettingsError(
            f"classifier.oos_score {kind!r} needs the training texts in the classifier's "
            "memory (classifier.knn_weight > 0)"
        )
    if len(x_val) < 2:
        raise SettingsError("the OOS score needs at least two in-scope validation texts")
    parts = _raw_parts(clf, x_val, kind, k, proba)
    stats = {}
    if kind == "combined":
        stats = {n: (float(v.mean()), float(v.std()) or 1.0) for n, v in parts.items()}
    det = OosDetector(kind, k, np.zeros(1), stats)
    det.reference = np.sort(det.raw(clf, x_val, proba))
    return det


def choose_oos_threshold(
    in_scope: np.ndarray,
    min_coverage: float,
    oos: np.ndarray | None = None,
    oos_recall: float | None = None,
) -> float:
    """The "unknown" threshold on OOS scores (unknown = score above it), from validation.

    Without OOS examples: the lowest threshold that keeps `min_coverage` of the in-scope
    scores at or below it (the most OOS recall that coverage allows). With OOS examples and
    an `oos_recall` target: the highest threshold that still rejects that share of them (the
    most in-scope coverage that recall allows), never below the coverage floor's.
    """
    s = np.sort(np.asarray(in_scope, dtype=np.float64))
    if len(s) == 0:
        raise SettingsError("the OOS threshold needs in-scope validation scores")
    # the smallest t with mean(s <= t) >= min_coverage (1e-9: a product like 0.1 * 30 is
    # 3.0000000000000004 in floating point, and must not count as 4 texts)
    n_cov = max(int(np.ceil(min_coverage * len(s) - 1e-9)), 1)
    t_cov = float(s[n_cov - 1])
    if oos is None or len(oos) == 0 or oos_recall is None:
        return t_cov
    o = np.sort(np.asarray(oos, dtype=np.float64))
    # the largest t with mean(o > t) >= oos_recall: just below the right OOS score
    n_keep = int(np.floor((1 - oos_recall) * len(o) + 1e-9))  # OOS scores allowed <= t
    t_rec = float(np.nextafter(o[n_keep], -np.inf)) if n_keep < len(o) else float(o[-1])
    return max(t_cov, t_rec)


def oos_rows(labels: np.ndarray, oos_label: str | None) -> np.ndarray:
    """Which rows are explicit out-of-scope examples (none without an `oos_label`)."""
    if oos_label is None:
        return np.zeros(len(labels), dtype=bool)
    return np.asarray(labels == oos_label, dtype=bool)
