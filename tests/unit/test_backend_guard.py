"""The int8 quality guard: the gate refuses an int8 export that loses more than params.yaml's
register.int8_tolerance, and a model whose int8 export was refused runs on fp32 ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from semflow.config import load_settings
from semflow.embedding import check_embedder, embedder_version, recorded_guard, resolve_embedder
from semflow.errors import ModelMismatchError
from semflow.models.backend_guard import int8_verdict, measured_key, serving_backend
from semflow.models.bundle import Bundle
from semflow.training.params import load_pipeline_params

FP32 = {"classifier.accuracy": 0.9412, "search.ndcg@10": 0.9339}


def _evaluated(int8: dict[str, float]) -> dict[str, float]:
    """Flat evaluate metrics as register reads them, with the two backends' measurements."""
    out = {"classifier.accuracy": FP32["classifier.accuracy"]}
    out.update({measured_key("fp32", m): v for m, v in FP32.items()})
    out.update({measured_key("onnx-int8", m): v for m, v in int8.items()})
    return out


@pytest.mark.parametrize(
    ("int8", "refused"),
    [
        ({"classifier.accuracy": 0.9362, "search.ndcg@10": 0.9339}, []),  # 0.50 pt: at the limit
        ({"classifier.accuracy": 0.9352, "search.ndcg@10": 0.9330}, ["classifier.accuracy"]),
        ({"classifier.accuracy": 0.9412, "search.ndcg@10": 0.9270}, ["search.ndcg@10"]),
        ({"classifier.accuracy": 0.95, "search.ndcg@10": 0.94}, []),  # int8 better: fine
    ],
)
def test_the_gate_refuses_an_int8_export_losing_more_than_half_a_point(int8, refused):
    tolerance = load_pipeline_params().register_.int8_tolerance
    assert tolerance == 0.005  # 0.5 pt, from params.yaml
    verdict = int8_verdict(_evaluated(int8), tolerance)
    assert verdict["passed"] is (not refused)
    assert [r.split()[1] for r in verdict["reasons"]] == refused
    if refused:
        assert (
            "pt below fp32's" in verdict["reasons"][0]
            and "at most 0.50 pt" in verdict["reasons"][0]
        )
    assert verdict["drops"]["classifier.accuracy"] == pytest.approx(
        FP32["classifier.accuracy"] - int8["classifier.accuracy"]
    )


def test_an_int8_export_that_was_not_measured_is_refused():
    flat = {measured_key("fp32", m): v for m, v in FP32.items()}
    verdict = int8_verdict(flat, 0.005)
    assert not verdict["passed"]
    assert "search.ndcg@10 was not measured" in verdict["reasons"][-1]


def test_serving_backend_falls_back_to_fp32_onnx_only_for_a_refused_int8():
    refused, accepted = {"passed": False}, {"passed": True}
    assert serving_backend("onnx-int8", refused) == "onnx"
    assert serving_backend("onnx-int8", accepted) == "onnx-int8"
    assert serving_backend("onnx-int8", None) == "onnx-int8"  # registered before the guard
    assert serving_backend("torch", refused) == "torch"
    assert serving_backend("onnx", refused) == "onnx"


def _bundle(version: str, guard: dict) -> Bundle:
    rng = np.random.default_rng(0)
    clf = LogisticRegression().fit(rng.normal(size=(8, 4)), ["a", "b"] * 4)
    return Bundle(None, version, ["a", "b"], 0.5, {"semantic": 1.0}, clf, backend_guard=guard)


def test_a_bundle_whose_int8_export_was_refused_embeds_with_fp32_onnx(tmp_path: Path):
    """Under SEMFLOW_BACKEND=onnx-int8 a torch-trained bundle runs its weights on int8, or on
    fp32 ONNX when its verdict refused int8; the verdict is recorded with the weights, so the
    sync (which resolves the live index's embedder without the bundle) falls back the same."""
    s = load_settings(home=tmp_path / "home", backend="onnx-int8")
    torch_v = embedder_version(s.base_embedder_dir, s.embedder_name)
    accepted = _bundle(torch_v, {"backend": "onnx-int8", "passed": True, "reasons": []})
    assert accepted.make_embedder(s).version == f"{torch_v}+onnx-int8"
    assert resolve_embedder(s, torch_v).version == f"{torch_v}+onnx-int8"

    refused = _bundle(torch_v, {"backend": "onnx-int8", "passed": False, "reasons": ["x"]})
    saved = Bundle.load(refused.save(tmp_path / "bundle"))
    assert saved.backend_guard == refused.backend_guard  # in bundle.json, under the digest
    assert saved.make_embedder(s).version == f"{torch_v}+onnx"
    assert recorded_guard(s, torch_v) == refused.backend_guard
    assert resolve_embedder(s, f"{torch_v}+onnx").version == f"{torch_v}+onnx"  # the sync
    # without the verdict (another host) the int8 embedder's queries are refused by an index
    # built on fp32 ONNX, never mixed into it
    elsewhere = load_settings(home=tmp_path / "other-home", backend="onnx-int8")
    int8 = resolve_embedder(elsewhere, f"{torch_v}+onnx")
    assert int8.version == f"{torch_v}+onnx-int8"
    with pytest.raises(ModelMismatchError, match=r"\+onnx, but the embedder is .*\+onnx-int8"):
        check_embedder(int8.version, f"{torch_v}+onnx", "the live index was built with")
    # other backends are not touched by the int8 verdict
    assert saved.make_embedder(load_settings(home=s.home, backend="torch")).version == torch_v
