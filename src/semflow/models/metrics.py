"""Evaluation metrics: classification and same-label retrieval (P@k, nDCG@k, MRR@k)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    labels = sorted(set(y_true))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "per_class_f1": {lab: float(v) for lab, v in zip(labels, per_class, strict=True)},
    }


def topk_similar(
    queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the k most similar corpus rows per (normalised)
    query, best first."""
    k = min(k, corpus.shape[0])
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    top = np.empty((queries.shape[0], k), dtype=np.result_type(queries, corpus))
    for s in range(0, queries.shape[0], chunk):
        sims = queries[s : s + chunk] @ corpus.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        rows = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-rows, axis=1, kind="stable")
        idx[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        top[s : s + chunk] = np.take_along_axis(rows, order, axis=1)
    return idx, top


def topk_neighbours(
    queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 1024
) -> np.ndarray:
    """Indices of the k most cosine-similar corpus rows per (normalised) query."""
    return topk_similar(queries, corpus, k, chunk)[0]


def ndcg_at_k(
    relevance_in_rank_order: Sequence[float], k: int, n_relevant: int | None = None
) -> float:
    """nDCG@k with binary/graded gains; the ideal uses `n_relevant` ones when given."""
    rel = np.asarray(relevance_in_rank_order, dtype=np.float64)[:k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((rel * discounts[: len(rel)]).sum())
    if n_relevant is None:
        ideal = np.sort(np.asarray(relevance_in_rank_order, dtype=np.float64))[::-1][:k]
    else:
        ideal = np.ones(min(n_relevant, k))
    idcg = float((ideal * discounts[: len(ideal)]).sum())
    return dcg / idcg if idcg > 0 else 0.0


def retrieval_metrics(
    ranked_labels: np.ndarray, query_labels: Sequence[str], n_relevant: Sequence[int], k: int
) -> dict[str, float]:
    """Same-label retrieval: P@k, nDCG@k (ideal = min(relevant, k) hits), MRR@k."""
    p, nd, rr = [], [], []
    for row, q, nrel in zip(ranked_labels, query_labels, n_relevant, strict=True):
        rel = (np.asarray(row[:k]) == q).astype(float)
        p.append(rel.mean() if len(rel) else 0.0)
        nd.append(ndcg_at_k(rel, k, n_relevant=int(nrel)) if nrel else 0.0)
        hits = np.nonzero(rel)[0]
        rr.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return {
        f"precision@{k}": float(np.mean(p)) if p else 0.0,
        f"ndcg@{k}": float(np.mean(nd)) if nd else 0.0,
        f"mrr@{k}": float(np.mean(rr)) if rr else 0.0,
    }


def search_metrics(
    q_vecs: np.ndarray,
    q_labels: Sequence[str],
    c_vecs: np.ndarray,
    c_labels: Sequence[str],
    k: int = 10,
) -> dict[str, float]:
    """Queries searched over the corpus by cosine; relevant = same label."""
    c_labels_arr = np.asarray(c_labels)
    idx = topk_neighbours(q_vecs, c_vecs, k)
    counts = {
        lab: int(n) for lab, n in zip(*np.unique(c_labels_arr, return_counts=True), strict=True)
    }
    return retrieval_metrics(c_labels_arr[idx], q_labels, [counts.get(q, 0) for q in q_labels], k)
