"""DAG-run overrides may not weaken the promotion gate unless an operator forces it."""

from __future__ import annotations

import logging

import pytest

from semflow.errors import SettingsError
from semflow.training.params import check_gate_overrides, load_pipeline_params
from semflow.training.workspace import dag_stage


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"register.floors": {}}, "removes the floor on classifier.accuracy"),
        (
            {"register.floors": {"classifier.accuracy": 0.1, "search.ndcg@10": 0.85}},
            "lowers the floor on classifier.accuracy from 0.9 to 0.1",
        ),
        ({"register.tolerance": 1.0}, "raises the tolerance from 0.01 to 1.0"),
        ({"register.int8_tolerance": 0.05}, "raises the int8 tolerance from 0.005 to 0.05"),
        ({"register.compare": []}, "stops comparing classifier.accuracy with the champion"),
        (  # unknown detection is part of the gate (issue 15)
            {"register.compare": ["classifier.accuracy", "classifier.macro_f1", "search.ndcg@10"]},
            "stops comparing open_set.oos_recall with the champion",
        ),
    ],
)
def test_weakening_overrides_are_refused_before_anything_runs(semflow_home, overrides, says):
    with pytest.raises(SettingsError, match="weaken the promotion gate") as err:
        dag_stage("register", overrides)
    assert says in str(err.value)
    assert "force: true" in str(err.value)
    assert not (semflow_home / "pipeline").exists()  # refused before the stage started


def test_an_override_cannot_register_under_another_model(semflow_home):
    """The registered model's name is a setting (SEMFLOW_REGISTERED_MODEL), not a param: a run
    naming another model (whose champion the candidate would face instead) is refused before
    anything runs, even forced."""
    overrides = {"register.model_name": "shadow"}
    with pytest.raises(
        SettingsError, match=r"register\.model_name: Extra inputs are not permitted"
    ):
        dag_stage("register", overrides, force=True, forced_by="ops", reason="try")
    assert not (semflow_home / "pipeline").exists()


def test_stricter_overrides_need_no_force():
    params = load_pipeline_params(
        overrides={
            "register.floors": {"classifier.accuracy": 0.95, "search.ndcg@10": 0.9, "x": 0.1},
            "register.tolerance": 0.0,
            "register.compare": [
                "classifier.accuracy",
                "classifier.macro_f1",
                "search.ndcg@10",
                "open_set.oos_recall",
                "open_set.auroc",
                "search.mrr@10",
            ],
        }
    )
    assert check_gate_overrides(params) is None


def test_force_lets_an_operator_weaken_the_gate_and_is_logged(caplog):
    params = load_pipeline_params(overrides={"register.tolerance": 0.5})
    with caplog.at_level(logging.WARNING, logger="semflow.training"):
        forced = check_gate_overrides(params, force=True, forced_by="ops", reason="CI subset")
    assert forced == {
        "by": "ops",
        "reason": "CI subset",
        "changes": "raises the tolerance from 0.01 to 0.5",
    }
    assert "promotion gate weakened by ops (reason: CI subset)" in caplog.text
