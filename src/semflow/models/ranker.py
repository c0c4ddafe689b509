"""Ranker: a weighted sum of semantic similarity, lexical overlap and numeric features.

The weights are non-negative and sum to 1, so scores stay comparable across versions.
`fit_weights` learns them from labelled (query, candidate, relevant) groups by searching
the weight simplex for the best mean nDCG@k; the cosine-only weighting is one of the
points searched, so the learned ranker is never worse than it on the training groups.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from semflow.errors import SettingsError
from semflow.models.metrics import ndcg_at_k, topk_neighbours

SEMANTIC = "semantic"
LEXICAL = "lexical"
BUILTIN = (SEMANTIC, LEXICAL)
_TOKEN = re.compile(r"[a-z0-9]+")


def validate_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Return the weights as floats; raise SettingsError naming a bad key."""
    if not isinstance(weights, Mapping) or not weights:
        raise SettingsError("ranker weights must be a non-empty mapping of feature -> weight")
    out: dict[str, float] = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not key:
            raise SettingsError(f"ranker weight name {key!r} must be a non-empty string")
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"ranker weight {key!r} must be a number, got {value!r}") from None
        if not math.isfinite(w) or w < 0:
            raise SettingsError(
                f"ranker weight {key!r} must be a finite number >= 0, got {value!r}"
            )
        out[key] = w
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        biggest = max(out, key=lambda k: out[k])
        raise SettingsError(
            f"ranker weights must sum to 1 (got {total:.6f}); check {biggest!r} and the others"
        )
    return out


def tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def lexical_overlap(query: str, candidate: str) -> float:
    """Share of the query's tokens that occur in the candidate (0 when the query has none)."""
    q = tokens(query)
    if not q:
        return 0.0
    return len(q & tokens(candidate)) / len(q)


def feature_matrix(
    query_vec: np.ndarray,
    cand_vecs: np.ndarray,
    query_text: str,
    cand_texts: Sequence[str],
    features: Sequence[Mapping[str, float]] | None,
    names: Sequence[str],
) -> np.ndarray:
    """`[n_candidates, len(names)]` feature values; a missing numeric feature counts 0."""
    cand = np.asarray(cand_vecs, dtype=np.float32)
    n = len(cand_texts)
    if cand.ndim != 2 or cand.shape[0] != n:
        raise SettingsError(
            f"got {cand.shape[0] if cand.ndim == 2 else 'bad'} candidate vectors for {n} texts"
        )
    feats = list(features) if features is not None else [{}] * n
    if len(feats) != n:
        raise SettingsError(f"got {len(feats)} feature rows for {n} candidates")
    q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
    qn = np.linalg.norm(q) or 1.0
    cn = np.linalg.norm(cand, axis=1)
    cn[cn == 0] = 1.0
    cosine = (cand @ q) / (cn * qn)
    out = np.zeros((n, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        if name == SEMANTIC:
            out[:, j] = cosine
        elif name == LEXICAL:
            out[:, j] = [lexical_overlap(query_text, t) for t in cand_texts]
        else:
            out[:, j] = [float((f or {}).get(name, 0.0) or 0.0) for f in feats]
    return out


def score_candidates(
    query_vec: np.ndarray,
    cand_vecs: np.ndarray,
    query_text: str,
    cand_texts: Sequence[str],
    features: Sequence[Mapping[str, float]] | None,
    weights: Mapping[str, float],
) -> list[tuple[float, dict[str, float]]]:
    """(score, components) per candidate, in input order; components hold every weighted
    feature plus "semantic" and "lexical"."""
    w = validate_weights(weights)
    names = list(BUILTIN) + [k for k in w if k not in BUILTIN]
    fm = feature_matrix(query_vec, cand_vecs, query_text, cand_texts, features, names)
    wv = np.array([w.get(k, 0.0) for k in names])
    scores = fm @ wv
    return [
        (float(s), {k: float(v) for k, v in zip(names, row, strict=True)})
        for s, row in zip(scores, fm, strict=True)
    ]


# -- learning the weights ---------------------------------------------------------
@dataclass
class RankGroup:
    """One query's candidates: feature matrix `[n, f]` and graded relevance `[n]`."""

    features: np.ndarray
    relevance: np.ndarray


def rank_groups(
    q_vecs: np.ndarray,
    q_texts: Sequence[str],
    q_labels: Sequence[str],
    c_vecs: np.ndarray,
    c_texts: Sequence[str],
    c_labels: Sequence[str],
    features: Sequence[str],
    n_cand: int,
) -> list[RankGroup]:
    """One group per query: its `n_cand` nearest corpus rows, relevant = same label."""
    idx = topk_neighbours(q_vecs, c_vecs, n_cand)
    c_labels_arr = np.asarray(c_labels)
    groups = []
    for qi, cand in enumerate(idx):
        fm = feature_matrix(
            q_vecs[qi], c_vecs[cand], q_texts[qi], [c_texts[j] for j in cand], None, features
        )
        groups.append(RankGroup(fm, (c_labels_arr[cand] == q_labels[qi]).astype(float)))
    return groups


def groups_ndcg(groups: Sequence[RankGroup], weights: np.ndarray, k: int) -> float:
    vals = []
    for g in groups:
        order = np.argsort(-(g.features @ weights), kind="stable")
        vals.append(ndcg_at_k(g.relevance[order], k))
    return float(np.mean(vals)) if vals else 0.0


def cosine_only(names: Sequence[str]) -> np.ndarray:
    """The weights of the cosine-only baseline over the features `names`."""
    return np.array([1.0 if n == SEMANTIC else 0.0 for n in names])


def simplex_grid(n: int, step: float) -> list[np.ndarray]:
    """All weight vectors on the n-simplex with the given step (cosine-only included)."""
    m = round(1.0 / step)
    pts = []
    for combo in itertools.product(range(m + 1), repeat=n - 1):
        if sum(combo) <= m:
            pts.append(np.array([m - sum(combo), *combo], dtype=np.float64) / m)
    return pts


def fit_weights(
    groups: Sequence[RankGroup], names: Sequence[str], k: int = 10, step: float = 0.05
) -> tuple[dict[str, float], float]:
    """Best simplex weights for mean nDCG@k over the groups; ties prefer more semantic."""
    if not groups:
        raise SettingsError("the ranker needs at least one labelled query group to learn from")
    if names[0] != SEMANTIC:
        raise SettingsError("the first ranker feature must be 'semantic'")
    best_w, best = None, -1.0
    for w in simplex_grid(len(names), step):
        score = groups_ndcg(groups, w, k)
        if score > best + 1e-12:
            best_w, best = w, score
    assert best_w is not None
    weights = {n: round(float(v), 6) for n, v in zip(names, best_w, strict=True)}
    # Rounding can leave the sum off by 1e-6; put the remainder on the semantic weight.
    weights[SEMANTIC] = round(1.0 - sum(v for n, v in weights.items() if n != SEMANTIC), 6)
    return weights, best
