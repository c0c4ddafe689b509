"""Classifier on normalised embeddings: logistic regression, optionally blended with a vote
of the nearest training texts, temperature-calibrated on validation, with an out-of-scope
score and its "unknown" threshold chosen on validation (semflow.models.oos)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semflow.errors import SettingsError
from semflow.models.metrics import topk_similar
from semflow.models.oos import OosDetector, OosRule, choose_oos_threshold, fit_detector


@dataclass(frozen=True)
class NeighbourVote:
    """How much of the prediction is a vote of the `k` most similar training texts.

    Each neighbour votes for its label with weight `exp(cosine / temperature)`; the vote's
    distribution is mixed into the linear model's as `(1 - weight) * lr + weight * vote`.
    """

    k: int = 10
    weight: float = 0.0
    temperature: float = 0.02

    def __post_init__(self) -> None:
        if self.k < 1:
            raise SettingsError(f"classifier.knn_k must be >= 1, got {self.k}")
        if not 0 <= self.weight <= 1:
            raise SettingsError(f"classifier.knn_weight must be in [0, 1], got {self.weight}")
        if self.temperature <= 0:
            raise SettingsError(f"classifier.knn_temperature must be > 0, got {self.temperature}")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def neighbour_vote(
    x: np.ndarray,
    memory: np.ndarray,
    memory_idx: np.ndarray,
    n_classes: int,
    vote: NeighbourVote,
) -> np.ndarray:
    """Label distribution `[n, n_classes]` of each row's `vote.k` nearest memory rows.

    Rows and memory are unit vectors, so the dot product is the cosine similarity.
    """
    top, sims = topk_similar(np.asarray(x, dtype=np.float32), memory, vote.k)
    s = sims.astype(np.float64)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / vote.temperature)
    out = np.zeros((len(x), n_classes))
    rows = np.repeat(np.arange(len(x)), top.shape[1])
    np.add.at(out, (rows, memory_idx[top].ravel()), w.ravel())
    return out / out.sum(axis=1, keepdims=True)


class CalibratedClassifier:
    """A fitted sklearn classifier whose logits are divided by a learned temperature.

    With a `NeighbourVote` of positive weight and a memory (the training embeddings and
    their label indices), the logits are those of the blend of the two distributions.
    """

    # Class-level defaults keep classifiers pickled before the vote existed loadable.
    vote: NeighbourVote = NeighbourVote()
    memory: np.ndarray | None = None
    memory_idx: np.ndarray | None = None
    # The out-of-scope score (None in classifiers pickled before it existed).
    oos: OosDetector | None = None

    def __init__(
        self,
        base: Any,
        temperature: float = 1.0,
        vote: NeighbourVote | None = None,
        memory: np.ndarray | None = None,
        memory_labels: Sequence[str] | np.ndarray | None = None,
    ) -> None:
        self.base = base
        self.temperature = float(temperature)
        self.classes_ = base.classes_
        if vote is not None and vote.weight > 0:
            if memory is None or memory_labels is None or len(memory) == 0:
                raise SettingsError("classifier.knn_weight > 0 needs the training embeddings")
            self.vote = vote
            self.memory = np.ascontiguousarray(memory, dtype=np.float32)
            self.memory_idx = np.searchsorted(self.classes_, np.asarray(memory_labels))

    def linear_decision(self, x: np.ndarray) -> np.ndarray:
        """The linear model's own logits `[n, n_classes]`, without the vote."""
        z = np.asarray(self.base.decision_function(x), dtype=np.float64)
        if z.ndim == 1:  # a binary model returns the positive class's logit only
            z = np.column_stack([np.zeros_like(z), z])
        return z

    def decision(self, x: np.ndarray) -> np.ndarray:
        z = self.linear_decision(x)
        if self.memory is None or self.memory_idx is None:
            return z
        w = self.vote.weight
        knn = neighbour_vote(x, self.memory, self.memory_idx, len(self.classes_), self.vote)
        return np.log(np.maximum((1 - w) * _softmax(z) + w * knn, 1e-12))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _softmax(self.decision(x) / self.temperature)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision(x), axis=1)]

    def oos_score(self, x: np.ndarray, proba: np.ndarray | None = None) -> np.ndarray:
        """OOS scores `[n]` in [0, 1] (higher = more out-of-scope); `proba`: already computed."""
        if self.oos is None:
            raise SettingsError("this classifier has no out-of-scope score")
        return self.oos.score(self, x, proba)


def fit_temperature(logits: np.ndarray, y_idx: np.ndarray) -> float:
    """Temperature minimising validation NLL (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y_idx)), y_idx].mean())

    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


@dataclass
class ClassifierResult:
    model: CalibratedClassifier
    threshold: float
    val_accuracy: float
    val_coverage: float
    temperature: float
    val_oos_recall: float | None = None  # only when validation holds OOS examples


def train_classifier(
    x_train: np.ndarray,
    y_train: Sequence[str],
    x_val: np.ndarray,
    y_val: Sequence[str],
    *,
    rule: OosRule,
    C: float = 10.0,
    max_iter: int = 2000,
    refit_on_val: bool = False,
    vote: NeighbourVote | None = None,
    x_val_oos: np.ndarray | None = None,
    seed: int = 0,
) -> ClassifierResult:
    """Fit on train; calibrate, fit the OOS score and pick the unknown threshold on validation.

    With `refit_on_val`, the final model is refitted on train + validation with the same C,
    keeping the temperature, OOS score calibration and threshold chosen on validation with
    the train-only model (10% more data for the weights; the reported validation figures
    stay the held-out ones). A `vote` of positive weight blends in the nearest training
    texts' labels: validation rows vote among the training rows; the final memory holds the
    final model's rows. `x_val_oos`: explicit out-of-scope validation texts (never a class);
    the threshold rule uses them (`rule.oos_recall`).
    """
    from sklearn.linear_model import LogisticRegression

    if C <= 0:
        raise SettingsError(f"classifier.C must be > 0, got {C}")
    if len(set(y_train)) < 2:
        raise SettingsError("the classifier needs at least two labels in the training split")
    base = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    base.fit(x_train, np.asarray(y_train))
    yv = np.asarray(y_val)
    known = np.isin(yv, base.classes_)
    if known.sum() < 2:
        raise SettingsError("the classifier needs at least two validation texts of known labels")
    clf = CalibratedClassifier(base, 1.0, vote, x_train, np.asarray(y_train))
    z = clf.decision(x_val[known])  # once: with a vote, each call searches the memory
    clf.temperature = fit_temperature(z, np.searchsorted(base.classes_, yv[known]))
    proba = _softmax(z / clf.temperature)
    correct = base.classes_[proba.argmax(axis=1)] == yv[known]
    det = fit_detector(clf, x_val[known], rule, proba)
    in_scores = det.score(clf, x_val[known], proba)
    oos_scores = None
    if x_val_oos is not None and len(x_val_oos):
        oos_scores = det.score(clf, x_val_oos)
    threshold = choose_oos_threshold(in_scores, rule.min_coverage, oos_scores, rule.oos_recall)
    if refit_on_val:
        x_all = np.vstack([x_train, x_val[known]])
        y_all = np.concatenate([y_train, yv[known]])
        full = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(x_all, y_all)
        clf = CalibratedClassifier(full, clf.temperature, vote, x_all, y_all)
    clf.oos = det
    return ClassifierResult(
        model=clf,
        threshold=threshold,
        val_accuracy=float(correct.mean()),
        val_coverage=float((in_scores <= threshold).mean()),
        temperature=clf.temperature,
        val_oos_recall=None if oos_scores is None else float((oos_scores > threshold).mean()),
    )
