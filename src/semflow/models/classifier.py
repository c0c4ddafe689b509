"""Classifier on normalised embeddings: logistic regression, temperature-calibrated on
validation, with an "unknown" threshold chosen on validation for a target precision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semflow.errors import SettingsError


class CalibratedClassifier:
    """A fitted sklearn classifier whose logits are divided by a learned temperature."""

    def __init__(self, base: Any, temperature: float = 1.0) -> None:
        self.base = base
        self.temperature = float(temperature)
        self.classes_ = base.classes_

    def decision(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.base.decision_function(x), dtype=np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.decision(x) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision(x), axis=1)]


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


def choose_threshold(scores: np.ndarray, correct: np.ndarray, target_precision: float) -> float:
    """Lowest confidence threshold whose accepted predictions reach `target_precision`."""
    if not 0 < target_precision <= 1:
        raise SettingsError(
            f"classifier.target_precision must be in (0, 1], got {target_precision}"
        )
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(float)
    precision = np.cumsum(c) / np.arange(1, len(c) + 1)
    ok = np.nonzero(precision >= target_precision)[0]
    if len(ok) == 0:
        return float(min(1.0, s[0] + 1e-9)) if len(s) else 0.0
    # Accept the largest prefix that still meets the target.
    return float(s[ok[-1]])


@dataclass
class ClassifierResult:
    model: CalibratedClassifier
    threshold: float
    val_accuracy: float
    val_coverage: float
    temperature: float


def train_classifier(
    x_train: np.ndarray,
    y_train: Sequence[str],
    x_val: np.ndarray,
    y_val: Sequence[str],
    *,
    C: float = 10.0,
    max_iter: int = 2000,
    target_precision: float = 0.95,
    refit_on_val: bool = False,
    seed: int = 0,
) -> ClassifierResult:
    """Fit on train, calibrate and pick the unknown threshold on validation.

    With `refit_on_val`, the final model is refitted on train + validation with the same C,
    keeping the temperature and threshold chosen on validation with the train-only model
    (10% more data for the weights; the reported validation figures stay the held-out ones).
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
    clf = CalibratedClassifier(base, 1.0)
    if known.sum() >= 2:
        idx = np.searchsorted(base.classes_, yv[known])
        clf.temperature = fit_temperature(clf.decision(x_val[known]), idx)
    proba = clf.predict_proba(x_val)
    pred = base.classes_[proba.argmax(axis=1)]
    correct = pred == yv
    scores = proba.max(axis=1)
    threshold = choose_threshold(scores, correct, target_precision) if len(yv) else 0.0
    if refit_on_val and known.any():
        full = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        full.fit(np.vstack([x_train, x_val[known]]), np.concatenate([y_train, yv[known]]))
        clf = CalibratedClassifier(full, clf.temperature)
    return ClassifierResult(
        model=clf,
        threshold=threshold,
        val_accuracy=float(correct.mean()) if len(yv) else 0.0,
        val_coverage=float((scores >= threshold).mean()) if len(yv) else 0.0,
        temperature=clf.temperature,
    )
