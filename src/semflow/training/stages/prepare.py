"""Stage `prepare`: the stratified, seeded train/val/test split."""

from __future__ import annotations

from typing import Any

import pandas as pd

from semflow.config import Settings
from semflow.training.common import Paths, read_docs, sample_frame, write_json
from semflow.training.params import PipelineParams


def prepare(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Stratified, seeded train/val(/test) split; the external test split is filtered to known labels."""
    from sklearn.model_selection import train_test_split

    df = read_docs(paths.snapshot).dropna(subset=["text", "label"])
    seed = params.base.seed
    ext = paths.resolve(params.prepare.external_test)
    if ext is None:
        rest, test = train_test_split(
            df, test_size=params.prepare.test_size, stratify=df["label"], random_state=seed
        )
    else:
        rest = df
        test = pd.read_csv(ext, dtype=str, keep_default_na=False).rename(
            columns={"category": "label"}
        )
        test = test[test["label"].isin(set(df["label"]))]
        test.insert(0, "doc_id", [f"test-{i}" for i in range(len(test))])
        test = sample_frame(
            test, params.base.model_copy(update={"max_labels": None}), params.base.test_subset
        )
    train, val = train_test_split(
        rest, test_size=params.prepare.val_size, stratify=rest["label"], random_state=seed
    )
    paths.prepared.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("val", val), ("test", test)):
        part[["doc_id", "text", "label"]].sort_values("doc_id").to_csv(
            paths.prepared / f"{name}.csv", index=False
        )
    info = {
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "labels": int(df["label"].nunique()),
    }
    write_json(paths.metrics / "prepare.json", info)
    return info
