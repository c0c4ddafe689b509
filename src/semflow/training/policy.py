"""The retraining policy: does a validated snapshot train new models?

params.yaml's `retrain` section; whichever comes first retrains:

- `min_changed_labelled`: at least that many labelled documents added, changed (text or
  label) or removed since the last training, found by comparing the snapshot with the
  fingerprints of the one that training was triggered on;
- `drift`: a `validate.drift` value beyond its limit that was within it at the last training
  (drift is measured against a fixed reference, so data that stays drifted after a retrain
  would otherwise retrain every time);
- `max_age_days`: the last training is older than that.

With no training recorded yet, the snapshot trains. The last training is durable: a JSON
state under the pipeline root (`state/retrain.json`), written when the policy triggers one.
No Airflow here: `dags/validate_data.py` calls `dag_decide`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from semflow.config import Settings, get_settings
from semflow.training.common import Paths, Tracker, log, read_docs
from semflow.training.params import DriftParams, PipelineParams, RetrainParams, load_pipeline_params


@dataclass(frozen=True)
class Decision:
    """The policy's verdict and the one sentence that says why."""

    retrain: bool
    reason: str
    changed_labelled: int
    drifted: list[str] = field(default_factory=list)
    age_days: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LastTraining:
    """What the last triggered training saw: when, its documents' fingerprints, its drift."""

    at: datetime
    docs: dict[str, str]
    drift: dict[str, float]


def fingerprints(df: pd.DataFrame) -> dict[str, str]:
    """doc_id -> a digest of the text and label of each labelled document of a snapshot."""
    out = {}
    for doc_id, text, label in zip(df["doc_id"], df["text"], df["label"], strict=True):
        if pd.isna(label):  # the snapshot keeps unlabelled rows; they never train
            continue
        blob = f"{text}\x1f{label}".encode()
        out[str(doc_id)] = hashlib.sha256(blob).hexdigest()[:16]
    return out


def count_changed(before: Mapping[str, str], now: Mapping[str, str]) -> int:
    """Labelled documents added, changed or removed between two sets of fingerprints."""
    return sum(1 for k, v in now.items() if before.get(k) != v) + len(before.keys() - now.keys())


def crossed(
    drift: Mapping[str, float], before: Mapping[str, float], limits: DriftParams
) -> list[str]:
    """Drift values beyond their limit now that were within it (or unmeasured) before."""
    caps = {
        "label_tvd": limits.label_tvd_max,
        "length_ks": limits.length_ks_max,
        "centroid_cosine": limits.centroid_cosine_max,
    }
    out = []
    for key, value in sorted(drift.items()):
        cap = caps.get(key)
        if cap is None or value <= cap:
            continue
        if key not in before or before[key] <= cap:
            out.append(f"{key} {value:.3g} > {cap:g}")
    return out


def decide(
    policy: RetrainParams,
    limits: DriftParams,
    *,
    docs: Mapping[str, str],
    drift: Mapping[str, float],
    last: LastTraining | None,
    now: datetime,
) -> Decision:
    """Retrain when any rule of `policy` fires (see the module docstring); pure."""
    if last is None:
        return Decision(True, "no training is recorded yet, so this snapshot trains.", len(docs))
    changed = count_changed(last.docs, docs)
    drifted = crossed(drift, last.drift, limits) if policy.drift else []
    age = round((now - last.at).total_seconds() / 86400, 3)
    fired = []
    if changed >= policy.min_changed_labelled:
        fired.append(
            f"{changed} labelled documents changed since the last training "
            f"(threshold {policy.min_changed_labelled})"
        )
    if drifted:
        fired.append(f"drift crossed its limit ({', '.join(drifted)})")
    if policy.max_age_days is not None and age > policy.max_age_days:
        fired.append(f"the last training is {age:.1f} days old (max {policy.max_age_days:g})")
    if fired:
        return Decision(True, "retrain: " + "; ".join(fired) + ".", changed, drifted, age)
    rules = [f"{changed} labelled documents changed (threshold {policy.min_changed_labelled})"]
    if policy.drift:
        rules.append("no drift crossed its limit")
    if policy.max_age_days is not None:
        rules.append(f"the last training is {age:.1f} days old (max {policy.max_age_days:g})")
    return Decision(False, "no retrain: " + ", ".join(rules) + ".", changed, drifted, age)


# -- the durable state -------------------------------------------------------------------
def read_last(path: Path) -> LastTraining | None:
    """The recorded last training, None before the first one."""
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return LastTraining(datetime.fromisoformat(d["at"]), d["docs"], d["drift"])


def write_last(path: Path, last: LastTraining, decision: Decision) -> None:
    """Record a triggered training (atomically: a crash leaves the old state or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "at": last.at.isoformat(),
        "reason": decision.reason,
        "drift": last.drift,
        "docs": last.docs,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, sort_keys=True))
    os.replace(tmp, path)


# -- the pipeline's step -------------------------------------------------------------------
def validated_drift(paths: Paths) -> dict[str, float]:
    """The drift values the `validate` stage wrote for the snapshot under `paths` (its
    metrics file: still there when DVC skipped an unchanged validate)."""
    f = paths.metrics / "validate.json"
    return dict(json.loads(f.read_text()).get("drift") or {}) if f.is_file() else {}


def decide_retraining(
    paths: Paths,
    params: PipelineParams,
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
    tags: Mapping[str, str] | None = None,
) -> Decision:
    """Apply the policy to the validated snapshot under `paths`; record a triggered training
    and log the decision (task log and an MLflow run `decide` in the pipeline's run tree)."""
    now = now or datetime.now(UTC)
    docs = fingerprints(read_docs(paths.snapshot))
    drift = validated_drift(paths)
    state = paths.retrain_state
    decision = decide(
        params.retrain,
        params.validate_.drift,
        docs=docs,
        drift=drift,
        last=read_last(state),
        now=now,
    )
    if decision.retrain:
        write_last(state, LastTraining(now, docs, dict(drift)), decision)
    log.info("retraining policy: %s", decision.reason)
    try:
        Tracker(paths, params, settings or get_settings(), "decide").run(
            lambda run: _log_decision(decision, tags or {})
        )
    except Exception as err:  # tracking is best effort; the decision stands without it
        log.warning("could not log the retraining decision to MLflow: %s", err)
    return decision


def _log_decision(decision: Decision, tags: Mapping[str, str]) -> None:
    import mlflow

    mlflow.set_tags(
        {
            **tags,
            "retrain.decision": str(decision.retrain).lower(),
            "retrain.reason": decision.reason,
        }
    )
    metrics = {"retrain.changed_labelled": float(decision.changed_labelled)}
    if decision.age_days is not None:
        metrics["retrain.age_days"] = decision.age_days
    mlflow.log_metrics(metrics)


def dag_decide(
    overrides: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The decision on `$SEMFLOW_HOME/pipeline`'s validated snapshot, with params.yaml + the
    DAG run's overrides."""
    s = get_settings()
    params = load_pipeline_params(overrides=overrides)
    return decide_retraining(Paths.for_home(s), params, settings=s, tags=tags).to_dict()


def sync_changes(counts: Mapping[str, int]) -> dict[str, int]:
    """The counts of a sync that changed the index (documents indexed or deleted); empty when
    it changed nothing, so nothing downstream needs to look at the data again."""
    changes = {k: int(counts.get(k, 0)) for k in ("indexed", "deleted")}
    return changes if any(changes.values()) else {}
