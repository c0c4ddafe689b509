"""The evaluate stage's backend section: the test metrics with fp32 and with int8 vectors.

The pipeline's features were embedded with `SEMFLOW_BACKEND` (torch by default). The other
side of the comparison (the int8 export, or fp32 ONNX when the pipeline ran on int8) embeds
only what the metrics need: the test split (classifier and search queries) and the search
corpus (train + val, as the index holds them). The classifier stays the one trained on the
pipeline's features, as it is served. Cost: one pass over ~13k Banking77 texts with the int8
export (about 30-60 s on 2 cores) plus the export itself the first time (cached under
`$SEMFLOW_HOME/onnx`, reused by registration).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from semflow.config import Settings, get_settings
from semflow.models.backend_guard import FALLBACK, GUARDED, REFERENCE
from semflow.training.common import Paths

log = logging.getLogger("semflow.training")


def backend_metrics(
    clf: Any, x_test: np.ndarray, y: list[str], x_corpus: np.ndarray, corpus: list[str], k: int
) -> dict[str, Any]:
    """The guarded test metrics of one set of vectors."""
    from semflow.models.metrics import classification_metrics, search_metrics

    pred = clf.classes_[clf.predict_proba(x_test).argmax(axis=1)]
    cm = classification_metrics(y, pred.tolist())
    return {
        "classifier": {"accuracy": cm["accuracy"], "macro_f1": cm["macro_f1"]},
        "search": search_metrics(x_test, y, x_corpus, corpus, k),
    }


def compare_backends(
    paths: Paths,
    settings: Settings | None,
    clf: Any,
    x: dict[str, np.ndarray],
    test: pd.DataFrame,
    corpus: pd.DataFrame,
    k: int,
) -> dict[str, Any]:
    """`{pipeline, fp32_backend, fp32: metrics, onnx-int8: metrics}`; `x` holds the pipeline's
    vectors of `test` and `corpus` (keys test, train)."""
    from semflow.training.stages.embed import embedder_for

    s = settings or get_settings()
    # what embedded the features (SEMFLOW_BACKEND, or onnx if int8 was refused for the weights)
    ran = embedder_for(paths, s).backend
    other = FALLBACK if ran == GUARDED else GUARDED
    emb = embedder_for(paths, s, backend=other)
    t0 = time.perf_counter()
    ox = {
        "test": emb.encode_all(test["text"].tolist(), f"embed test ({other})"),
        "train": emb.encode_all(corpus["text"].tolist(), f"embed corpus ({other})"),
    }
    seconds = time.perf_counter() - t0
    y, labels = test["label"].tolist(), corpus["label"].tolist()
    measured = backend_metrics(clf, x["test"], y, x["train"], labels, k)
    again = backend_metrics(clf, ox["test"], y, ox["train"], labels, k)
    log.info(
        "backend check: %d texts embedded with %s in %.1f s",
        len(ox["test"]) + len(ox["train"]),
        other,
        seconds,
    )
    int8, fp32 = (measured, again) if ran == GUARDED else (again, measured)
    return {
        "pipeline": ran,
        "fp32_backend": FALLBACK if ran == GUARDED else ran,
        REFERENCE: fp32,
        GUARDED: int8,
    }
