"""GX suites and drift checks on small frames (real great-expectations, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semflow.validation import ValidationFailed, validate_dataset
from semflow.validation.checks import centroid_shift, ks_statistic, label_tvd

PARAMS = {
    "min_rows": 1,
    "min_text_chars": 2,
    "max_text_chars": 200,
    "max_duplicate_ratio": 0.2,
    "min_examples_per_label": 3,
    "drift": {"label_tvd_max": 0.3, "length_ks_max": 0.5, "centroid_cosine_max": 0.1},
}
LABELS = ["card_lost", "top_up"]


def _frame(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "doc_id": [f"d{i}" for i in range(n)],
            "text": [f"message number {i} about my account" for i in range(n)],
            "label": [LABELS[i % 2] for i in range(n)],
        }
    )


def test_clean_data_passes_and_writes_data_docs(tmp_path: Path) -> None:
    rep = validate_dataset(_frame(), PARAMS, allowed_labels=LABELS, report_dir=tmp_path)
    assert rep.success and rep.rows == 12
    assert not rep.critical_failures
    assert rep.data_docs and Path(rep.data_docs).is_file()
    html = list((tmp_path / "data_docs").rglob("*.html"))
    assert any("validations" in str(p) for p in html)
    assert (tmp_path / "validation.json").is_file()


def _runs(report_dir: Path) -> set[str]:
    return {
        p.parent.parent.name for p in (report_dir / "data_docs" / "validations").rglob("*.html")
    }


def test_data_docs_name_each_run_after_the_data(tmp_path: Path) -> None:
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    for frame, out in ((_frame(), one), (_frame(), two), (_frame(14), other)):
        validate_dataset(frame, PARAMS, allowed_labels=LABELS, report_dir=out)
    assert len(_runs(one)) == 1 and next(iter(_runs(one))).startswith("data-")
    assert _runs(one) == _runs(two) != _runs(other)


def test_nulls_and_unknown_labels_fail(tmp_path: Path) -> None:
    df = _frame()
    df.loc[0, "text"] = None
    df.loc[1, "label"] = "not_a_label"
    df.loc[2, "label"] = None
    with pytest.raises(ValidationFailed) as err:
        validate_dataset(df, PARAMS, allowed_labels=LABELS, report_dir=tmp_path)
    failed = {f"{c.suite}.{c.name}" for c in err.value.report.critical_failures}
    assert "documents.expect_column_values_to_not_be_null(text)" in failed
    assert "training.expect_column_values_to_be_in_set(label)" in failed
    assert "training.expect_column_values_to_not_be_null(label)" in failed
    assert "validation failed on 12 rows" in str(err.value)
    assert (tmp_path / "data_docs" / "index.html").is_file()


def test_empty_extract_fails() -> None:
    empty = _frame(0)
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_be_between"):
        validate_dataset(empty, PARAMS, allowed_labels=LABELS)


def test_missing_column_and_too_few_per_label() -> None:
    df = _frame().drop(columns=["label"])
    with pytest.raises(ValidationFailed, match=r"expect_column_to_exist\(label\)"):
        validate_dataset(df, PARAMS)
    df = _frame(12)
    df.loc[0, "label"] = "rare"
    rep = validate_dataset(df, PARAMS, raise_on_failure=False)
    names = {c.name for c in rep.critical_failures}
    assert "expect_column_min_to_be_between(count)" in names


def test_duplicates_are_a_warning_not_a_failure() -> None:
    df = _frame()
    df["text"] = "same text again"
    rep = validate_dataset(df, PARAMS, raise_on_failure=False)
    assert rep.success
    assert any("proportion_of_unique" in w.name for w in rep.warnings)


def test_drift_detected_against_reference() -> None:
    ref = _frame(40)
    cur = _frame(40)
    cur["label"] = "card_lost"  # label distribution collapsed
    cur["text"] = cur["text"] + " " + "x" * 150  # much longer texts

    def encode(texts: list[str]) -> np.ndarray:
        return np.array([[1.0, len(t) / 100] for t in texts], dtype=np.float32)

    rep = validate_dataset(cur, PARAMS, reference=ref, encode=encode, raise_on_failure=False)
    assert rep.drift["label_tvd"] == pytest.approx(0.5)
    assert rep.drift["length_ks"] == pytest.approx(1.0)
    assert rep.drift["centroid_cosine"] > 0.1
    drifted = {c.name for c in rep.warnings if c.suite == "drift"}
    assert drifted == {"label_tvd", "length_ks", "centroid_cosine"}
    # drift made critical by params stops the pipeline
    crit = {**PARAMS, "drift": {**PARAMS["drift"], "critical": True}}
    with pytest.raises(ValidationFailed, match=r"drift\.label_tvd"):
        validate_dataset(cur, crit, reference=ref, encode=encode)
    same = validate_dataset(ref, PARAMS, reference=ref, encode=encode)
    assert same.drift["label_tvd"] == 0 and same.drift["length_ks"] == 0


def test_drift_primitives() -> None:
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0
    assert ks_statistic([1, 2], [10, 11]) == 1
    assert label_tvd(pd.Series(["a", "b"]), pd.Series(["c"])) == 1
    v = np.array([[1.0, 0.0]])
    assert centroid_shift(v, v) == pytest.approx(0)
    # float32 noise in the centroids must not leak into the metrics file
    for same in ([[1, 2, 3]], [[0.1, 0.7, 0.2, 0.9]]):  # 1 - cos is +-7e-8 unrounded
        w = np.array(same, dtype=np.float32)
        assert centroid_shift(w, w) == 0.0
    assert centroid_shift(v, np.array([[0.0, 1.0]])) == pytest.approx(1)
