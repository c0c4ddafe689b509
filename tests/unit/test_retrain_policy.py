"""The retraining policy: enough changed labelled documents, new drift or an old model
retrains; nothing else does. The last training is read back from its durable state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from semflow.training import Paths, load_pipeline_params
from semflow.training.params import DriftParams, RetrainParams
from semflow.training.policy import (
    LastTraining,
    count_changed,
    decide,
    decide_retraining,
    fingerprints,
    read_last,
    sync_changes,
)

NOW = datetime(2026, 7, 8, 12, tzinfo=UTC)
LIMITS = DriftParams(
    label_tvd_max=0.25, length_ks_max=0.2, centroid_cosine_max=0.05, sample=100, critical=False
)
POLICY = RetrainParams(min_changed_labelled=3, drift=True, max_age_days=7)
CALM = {"label_tvd": 0.1, "length_ks": 0.1, "centroid_cosine": 0.01}


def _docs(n: int, edit: int = 0) -> dict[str, str]:
    return {f"d{i}": f"v{int(i < edit)}" for i in range(n)}


def _last(docs: dict[str, str], days_ago: float = 1, drift: dict | None = None) -> LastTraining:
    return LastTraining(NOW - timedelta(days=days_ago), docs, drift or CALM)


def _decide(docs, last, drift=CALM, policy=POLICY):
    return decide(policy, LIMITS, docs=docs, drift=drift, last=last, now=NOW)


def test_the_first_snapshot_trains() -> None:
    d = _decide(_docs(10), None)
    assert d.retrain and d.reason == "no training is recorded yet, so this snapshot trains."


def test_changes_below_the_threshold_do_not_retrain_and_at_it_do() -> None:
    last = _last(_docs(10))
    below = _decide(_docs(10, edit=2), last)
    assert not below.retrain and below.changed_labelled == 2
    assert below.reason == (
        "no retrain: 2 labelled documents changed (threshold 3), no drift crossed its limit, "
        "the last training is 1.0 days old (max 7)."
    )
    at = _decide(_docs(10, edit=3), last)
    assert at.retrain and at.reason == (
        "retrain: 3 labelled documents changed since the last training (threshold 3)."
    )


def test_added_and_removed_documents_count_as_changes() -> None:
    before = {"a": "1", "b": "1", "c": "1"}
    assert count_changed(before, {"a": "1", "b": "2", "d": "1"}) == 3  # b changed, d new, c gone
    assert count_changed(before, dict(before)) == 0


def test_fingerprints_follow_text_and_label_and_skip_unlabelled_rows() -> None:
    df = pd.DataFrame(
        {"doc_id": ["1", "2", "3"], "text": ["a", "a", "b"], "label": ["x", "y", None]}
    )
    fp = fingerprints(df)
    assert set(fp) == {"1", "2"} and fp["1"] != fp["2"]
    relabelled = fingerprints(df.assign(label=["y", "y", None]))
    assert count_changed(fp, relabelled) == 1


def test_drift_that_crosses_its_limit_retrains_once() -> None:
    drifted = {**CALM, "label_tvd": 0.4}
    d = _decide(_docs(10), _last(_docs(10)), drift=drifted)
    assert d.retrain and d.drifted == ["label_tvd 0.4 > 0.25"]
    assert d.reason == "retrain: drift crossed its limit (label_tvd 0.4 > 0.25)."
    # Already beyond it at the last training: that model saw this data, nothing new.
    again = _decide(_docs(10), _last(_docs(10), drift=drifted), drift=drifted)
    assert not again.retrain and again.drifted == []
    # The policy may ignore drift altogether.
    off = RetrainParams(min_changed_labelled=3, drift=False, max_age_days=7)
    ignored = _decide(_docs(10), _last(_docs(10)), drift=drifted, policy=off)
    assert not ignored.retrain and "drift" not in ignored.reason


def test_an_old_model_retrains_unless_the_age_rule_is_off() -> None:
    old = _last(_docs(10), days_ago=8)
    d = _decide(_docs(10), old)
    assert d.retrain and d.age_days == 8.0
    assert d.reason == "retrain: the last training is 8.0 days old (max 7)."
    never = RetrainParams(min_changed_labelled=3, drift=True, max_age_days=None)
    assert not _decide(_docs(10), old, policy=never).retrain


def test_every_rule_that_fires_is_in_the_one_sentence() -> None:
    d = _decide(_docs(10, edit=5), _last(_docs(10), days_ago=9), drift={**CALM, "length_ks": 0.5})
    assert d.retrain and d.reason.count(";") == 2 and d.reason.endswith("(max 7).")


def test_a_sync_is_a_change_only_when_it_indexed_or_deleted() -> None:
    assert sync_changes({"indexed": 0, "deleted": 0, "skipped": 240, "stale": 3}) == {}
    assert sync_changes({"indexed": 0, "skipped": 240}) == {}
    assert sync_changes({"indexed": 2, "deleted": 0, "skipped": 9}) == {"indexed": 2, "deleted": 0}
    assert sync_changes({"indexed": 0, "deleted": 1}) == {"indexed": 0, "deleted": 1}


def test_the_last_training_is_durable(semflow_home: Path, tmp_path: Path) -> None:
    paths = Paths(tmp_path / "pipeline")
    paths.snapshot.parent.mkdir(parents=True)
    df = pd.DataFrame({"doc_id": [f"{i}" for i in range(5)], "text": ["t"] * 5, "label": ["a"] * 5})
    df.to_csv(paths.snapshot, index=False)
    params = load_pipeline_params(overrides={"retrain.min_changed_labelled": 2})

    first = decide_retraining(paths, params, now=NOW)
    assert first.retrain and read_last(paths.retrain_state).at == NOW
    # Same snapshot an hour later: nothing changed, and the state is not rewritten.
    later = NOW + timedelta(hours=1)
    same = decide_retraining(paths, params, now=later)
    assert not same.retrain and read_last(paths.retrain_state).at == NOW
    df.assign(text=["t", "u", "u", "t", "t"]).to_csv(paths.snapshot, index=False)
    changed = decide_retraining(paths, params, now=later)
    assert changed.retrain and changed.changed_labelled == 2
    assert read_last(paths.retrain_state).at == later
    # The drift the validate stage wrote: beyond its limit, unmeasured at the last training.
    (paths.metrics / "validate.json").parent.mkdir(parents=True)
    (paths.metrics / "validate.json").write_text('{"drift": {"label_tvd": 0.9}}')
    drifted = decide_retraining(paths, params, now=later)
    assert drifted.retrain and drifted.drifted == ["label_tvd 0.9 > 0.25"]
    assert read_last(paths.retrain_state).drift == {"label_tvd": 0.9}
    assert not decide_retraining(paths, params, now=later).retrain
