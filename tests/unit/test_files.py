"""FileSource reads a file's records column by column, into what pandas' to_dict gives."""

from __future__ import annotations

import numpy as np
import pandas as pd

from semflow.sources.files import _records


def _frame() -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "score": [1.5, np.nan, 2.0],
            "flag": [True, False, None],
            "when": pd.to_datetime(["2026-01-01", None, "2026-02-01"]),
            "text": ["a", None, "c"],
            "tags": [["x", "y"], None, ["z"]],
            "count": pd.array([1, None, 3], dtype="Int64"),
        }
    )
    return df.astype(object).where(df.notna(), None)  # as FileSource prepares it


def _typed(records: list[dict]) -> list[list[tuple[str, object, type]]]:
    return [[(k, v, type(v)) for k, v in r.items()] for r in records]


def test_records_are_to_dicts_values_and_types():
    df = _frame()
    assert _typed(_records(df)) == _typed(df.to_dict("records"))


def test_numpy_scalars_and_repeated_columns_are_boxed_like_to_dict():
    df = pd.DataFrame({"x": np.array([np.int64(7), "a"], dtype=object)})
    assert _typed(_records(df)) == _typed(df.to_dict("records"))
    assert type(_records(df)[0]["x"]) is int
    dup = pd.DataFrame([[1, 2]], columns=["a", "a"]).astype(object)
    assert _records(dup) == dup.to_dict("records")
