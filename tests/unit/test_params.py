"""params.yaml is the only home of hyper-parameters: a key missing from it is an error that
names the key, never a model trained with a default written in code."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import BaseModel

from semflow.config import PARAMS_FILE, load_params
from semflow.errors import SettingsError
from semflow.training import PipelineParams, parse_params


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """Schema fields by their params.yaml key (the alias where one is set)."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _keys(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key of `data` (dotted), down to the leaves; a mapping-valued param
    (register.floors) is one leaf, its entries are data, not schema."""
    out: list[str] = []
    fields = _fields(model)
    for key, value in data.items():
        out.append(prefix + key)
        sub = fields[key].annotation if key in fields else None
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            out.extend(_keys(sub, value, f"{prefix}{key}."))
    return out


RAW = load_params(PARAMS_FILE)
KEYS = _keys(PipelineParams, RAW)


def _without(data: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    cur = out
    for p in parents:
        cur = cur[p]
    del cur[last]
    return out


def test_the_repo_params_parse_and_every_key_is_covered() -> None:
    parse_params(RAW)
    assert {"finetune.epochs", "classifier.knn_weight", "register.floors"} <= set(KEYS)
    assert "validate.drift.critical" in KEYS
    assert {"retrain.min_changed_labelled", "retrain.drift", "retrain.max_age_days"} <= set(KEYS)


@pytest.mark.parametrize("key", [k for k in KEYS if k != "demo"])  # optional: below
def test_a_missing_key_is_an_error_naming_it(key: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_params(_without(RAW, key))
    msg = str(err.value)
    assert msg.startswith("invalid params.yaml: ")
    assert re.search(rf"(^|; |: ){re.escape(key)}: Field required(;|$)", msg), msg


def _defaults(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for key, f in _fields(model).items():
        if not f.is_required():
            out.append(prefix + key)
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out.extend(_defaults(sub, f"{prefix}{key}."))
    return out


def test_the_schema_has_no_defaults() -> None:
    # `demo` alone may be absent: no stage reads it, and a registered version's params.yaml
    # from before it existed must still parse when that version is reproduced.
    assert _defaults(PipelineParams) == ["demo"]


@pytest.mark.parametrize("mode", sorted(RAW["demo"]))
def test_every_demo_mode_is_a_valid_override_of_the_params(mode: str) -> None:
    params = parse_params(RAW, RAW["demo"][mode])
    for key, value in RAW["demo"][mode].items():
        section, name = key.split(".", 1)
        assert params.section(section)[name] == value, key


def test_the_demo_section_is_not_part_of_what_a_run_trains_on() -> None:
    params = parse_params(RAW)
    assert params.demo and "demo" not in params.raw()
    without = {k: v for k, v in RAW.items() if k != "demo"}
    assert parse_params(without).raw() == params.raw()
