"""Classifier latency: the neighbour vote's cost next to logistic regression alone and next
to embedding the same texts, all measured in this run. Prints one JSON object.

    .venv/bin/python benchmarks/classify.py [--memory 10003] [--labels 77] [--repeat 200]

The memory has Banking77's shape (train + val rows of 384-d unit vectors, 77 labels). The
goal: with the vote, classifying one text costs less than half of embedding it, so the
vote never dominates a /classify request.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._load import int_options

GOAL_RATIO = 0.5  # vote-blend classify time / embed time, one text per request


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median of `repeat` timings, in milliseconds (the median resists a busy neighbour)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main() -> None:
    args = int_options(__doc__, memory=10003, labels=77, repeat=200)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sklearn.linear_model import LogisticRegression

    from semflow.config import get_settings
    from semflow.embedding import resolve_embedder
    from semflow.models.classifier import CalibratedClassifier, NeighbourVote

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.labels, 384))
    y = rng.integers(0, args.labels, args.memory)
    x = centers[y] + rng.normal(scale=2.0, size=(args.memory, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = np.array([f"l{i:03d}" for i in range(args.labels)])[y]
    base = LogisticRegression(C=10.0, max_iter=200).fit(x, labels)
    linear = CalibratedClassifier(base)
    blend = CalibratedClassifier(base, 1.0, NeighbourVote(10, 0.5, 0.02), x, labels)
    one, batch = x[:1], x[:32]
    embedder = resolve_embedder(get_settings())  # no cache: every call encodes
    text = ["I still have not received my new card, how long does delivery take?"]
    embedder.encode(text)
    ms = {
        "linear_1": median_ms(lambda: linear.predict_proba(one), args.repeat),
        "vote_1": median_ms(lambda: blend.predict_proba(one), args.repeat),
        "linear_32": median_ms(lambda: linear.predict_proba(batch), args.repeat // 4),
        "vote_32": median_ms(lambda: blend.predict_proba(batch), args.repeat // 4),
        "embed_1": median_ms(lambda: embedder.encode(text), args.repeat // 4),
    }
    ratio = ms["vote_1"] / ms["embed_1"]
    print(
        json.dumps(
            {
                "memory_rows": args.memory,
                "labels": args.labels,
                "ms": {k: round(v, 3) for k, v in ms.items()},
                "vote_over_embed_1": round(ratio, 3),
                "goal_ratio": GOAL_RATIO,
                "ok": ratio < GOAL_RATIO,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
