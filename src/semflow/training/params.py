"""The schema of `params.yaml`, the only home of the pipeline's hyper-parameters.

No field has a default: a key missing from params.yaml is an error naming it, never a
model silently trained with a value written in code. Run overrides (DAG conf, tests) are
dotted keys applied to the file's values before validation.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from semflow.config import load_params
from semflow.errors import SettingsError
from semflow.models.finetune import Loss
from semflow.models.oos import OosScore

log = logging.getLogger("semflow.training")


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseParams(_P):
    seed: int
    subset: int | None = Field(ge=10)
    max_labels: int | None = Field(ge=2)
    test_subset: int | None = Field(ge=10)
    tenant: str


class SnapshotParams(_P):
    fields: list[str]
    sync_if_empty: bool


class DriftParams(_P):
    label_tvd_max: float = Field(ge=0, le=1)
    length_ks_max: float = Field(ge=0, le=1)
    centroid_cosine_max: float = Field(ge=0, le=2)
    sample: int = Field(ge=10)
    critical: bool


class ValidateParams(_P):
    reference: str | None  # repo-relative gold data; null = no drift reference
    min_rows: int = Field(ge=1)
    min_text_chars: int = Field(ge=0)
    max_text_chars: int = Field(ge=1)
    max_duplicate_ratio: float = Field(ge=0, le=1)
    min_examples_per_label: int = Field(ge=1)
    allowed_labels: str | None
    drift: DriftParams


class PrepareParams(_P):
    val_size: float = Field(gt=0, lt=0.5)
    test_size: float = Field(gt=0, lt=0.5)
    external_test: str | None  # repo-relative gold test set; null = split the snapshot


class FinetuneParams(_P):
    enabled: bool
    loss: Loss
    epochs: int = Field(ge=1, le=20)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0, lt=1)
    warmup_ratio: float = Field(ge=0, le=1)
    max_pairs: int = Field(ge=1)
    max_seq_length: int = Field(ge=8, le=512)
    scale: float = Field(gt=0)
    margin: float = Field(ge=0, lt=1)
    freeze_layers: int = Field(ge=0, le=24)


class ClassifierParams(_P):
    C: float = Field(gt=0)
    max_iter: int = Field(ge=10)
    refit_on_val: bool
    knn_k: int = Field(ge=1)
    knn_weight: float = Field(ge=0, le=1)
    knn_temperature: float = Field(gt=0)
    oos_score: OosScore  # the out-of-scope score (semflow.models.oos)
    oos_knn_k: int = Field(ge=1)
    min_coverage: float = Field(gt=0, le=1)
    oos_label: str | None  # the label of explicit out-of-scope examples; null = none
    oos_recall: float = Field(gt=0, le=1)


class RankerParams(_P):
    enabled: bool  # false: cosine-only ranking, no weights learned
    candidates: int = Field(ge=2)
    k: int = Field(ge=1)
    step: float = Field(gt=0, le=0.5)
    features: list[str]
    max_queries: int = Field(ge=1)


class OpenSetParams(_P):
    holdout_ratio: float = Field(gt=0, lt=1)  # share of labels held out as out-of-scope


class EvaluateParams(_P):
    k: int = Field(ge=1)
    open_set: OpenSetParams


class RegisterParams(_P):
    floors: dict[str, float]
    compare: list[str]
    tolerance: float = Field(ge=0, le=1)
    # most an int8 export may lose on a guarded metric (semflow.models.backend_guard)
    int8_tolerance: float = Field(ge=0, le=1)


class RetrainParams(_P):
    """When a validated snapshot retrains (semflow.training.policy): whichever comes first."""

    min_changed_labelled: int = Field(ge=1)  # labelled documents changed since the last one
    drift: bool  # a validate.drift value crossed its limit since the last one
    max_age_days: float | None = Field(gt=0)  # the last one is older than this; null = off


class PipelineParams(_P):
    base: BaseParams
    snapshot: SnapshotParams
    validate_: ValidateParams = Field(alias="validate")
    prepare: PrepareParams
    finetune: FinetuneParams
    classifier: ClassifierParams
    ranker: RankerParams
    evaluate: EvaluateParams
    register_: RegisterParams = Field(alias="register")
    retrain: RetrainParams
    # `make demo`'s modes: dotted overrides of the sections above, by mode. No stage reads
    # them, so they are not part of what a run trains on (`raw`).
    demo: dict[str, dict[str, Any]] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def section(self, name: str) -> dict[str, Any]:
        attr = f"{name}_" if name in ("validate", "register") else name
        return getattr(self, attr).model_dump()

    def raw(self) -> dict[str, Any]:
        """The sections a run trains on, as params.yaml spells them."""
        return self.model_dump(by_alias=True, exclude={"demo"})


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise SettingsError(f"params override {key!r}: {p!r} is not a section")
    cur[parts[-1]] = value


def _describe(e: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in e["loc"])
    if e["type"] == "missing":  # its input is the whole enclosing section: not worth printing
        return f"{where}: {e['msg']}"
    return f"{where}: {e['msg']} (got {e.get('input')!r})"


def parse_params(
    raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> PipelineParams:
    """Validate params (with dotted overrides); the error names every bad or missing key."""
    data = copy.deepcopy(dict(raw))
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    try:
        return PipelineParams.model_validate(data)
    except ValidationError as err:
        parts = [_describe(e) for e in err.errors()]
        raise SettingsError("invalid params.yaml: " + "; ".join(parts)) from None


def load_pipeline_params(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> PipelineParams:
    """params.yaml (the repo's unless `path`) with dotted `overrides`, validated."""
    return parse_params(load_params(path), overrides)


# -- the promotion gate under run overrides ---------------------------------------------
def gate_weakenings(base: RegisterParams, new: RegisterParams) -> list[str]:
    """How `new` loosens the promotion gate of `base` (params.yaml): a floor removed or
    lowered, the tolerance raised, or a metric dropped from the champion comparison. (The
    registered model's name is a setting, SEMFLOW_REGISTERED_MODEL, not a param: a run
    cannot override it.)"""
    out = []
    for metric, floor in base.floors.items():
        if metric not in new.floors:
            out.append(f"removes the floor on {metric} ({floor})")
        elif new.floors[metric] < floor:
            out.append(f"lowers the floor on {metric} from {floor} to {new.floors[metric]}")
    if new.tolerance > base.tolerance:
        out.append(f"raises the tolerance from {base.tolerance} to {new.tolerance}")
    if new.int8_tolerance > base.int8_tolerance:
        out.append(f"raises the int8 tolerance from {base.int8_tolerance} to {new.int8_tolerance}")
    for metric in base.compare:
        if metric not in new.compare:
            out.append(f"stops comparing {metric} with the champion")
    return out


def check_gate_overrides(
    params: PipelineParams,
    *,
    force: bool = False,
    forced_by: str | None = None,
    reason: str | None = None,
    base: PipelineParams | None = None,
) -> dict[str, str] | None:
    """Refuse overrides that weaken the promotion gate unless an operator forces them; a forced
    run is logged and returns what `promote` records on the version (else None)."""
    weaker = gate_weakenings((base or load_pipeline_params()).register_, params.register_)
    if not weaker:
        return None
    changes = "; ".join(weaker)
    if not force:
        raise SettingsError(
            f"the run's overrides weaken the promotion gate ({changes}); run it with "
            "force: true and a reason to register with a weaker gate"
        )
    who, why = forced_by or "unknown", reason or "none given"
    log.warning("promotion gate weakened by %s (reason: %s): %s", who, why, changes)
    return {"by": who, "reason": why, "changes": changes}
