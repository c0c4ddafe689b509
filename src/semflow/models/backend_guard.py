"""The int8 quality guard: may the dynamically quantised ONNX export serve a model?

`evaluate` measures the test split twice, with fp32 vectors and with the int8 export's
(`metrics/evaluate.json`'s `backends` section, see semflow.training.backend_check). At
registration `int8_verdict` compares them: an int8 export that loses more than the
`register.int8_tolerance` of params.yaml on any guarded metric is refused. The verdict is
recorded in the bundle (so a Bento carries it) and on the model version; `serving_backend`
is the one place that turns a refused `onnx-int8` into fp32 `onnx`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GUARDED = "onnx-int8"
FALLBACK = "onnx"
# The key of the fp32 measurements (torch or fp32 ONNX: the same vectors to 1e-4).
REFERENCE = "fp32"
SECTION = "backends"
METRICS = ("classifier.accuracy", "search.ndcg@10")
# Float noise of metrics that are means over the same test split.
_EPS = 1e-9


def measured_key(backend: str, metric: str) -> str:
    """The flat evaluate metric of `metric` measured with `backend` (or `fp32`)."""
    return f"{SECTION}.{backend}.{metric}"


def int8_verdict(metrics: Mapping[str, float], tolerance: float) -> dict[str, Any]:
    """Whether the int8 export may serve, from flat evaluate metrics: refused when any guarded
    metric is more than `tolerance` below fp32's, or was not measured."""
    reasons: list[str] = []
    drops: dict[str, float] = {}
    for metric in METRICS:
        ref = metrics.get(measured_key(REFERENCE, metric))
        got = metrics.get(measured_key(GUARDED, metric))
        if ref is None or got is None:
            reasons.append(f"{metric} was not measured with both fp32 and int8 vectors")
            continue
        drops[metric] = float(ref) - float(got)
        if drops[metric] > tolerance + _EPS:
            reasons.append(
                f"int8 {metric} {got:.4f} is {100 * drops[metric]:.2f} pt below fp32's "
                f"{ref:.4f} (at most {100 * tolerance:.2f} pt)"
            )
    return {
        "backend": GUARDED,
        "passed": not reasons,
        "tolerance": float(tolerance),
        "drops": drops,
        "reasons": reasons,
    }


def serving_backend(requested: str, verdict: Mapping[str, Any] | None) -> str:
    """The backend that runs a model's embedder: `requested`, except fp32 ONNX in place of an
    int8 export the guard refused (no verdict: a model registered before the guard)."""
    if requested == GUARDED and verdict and not verdict.get("passed", True):
        return FALLBACK
    return requested
