"""A real `bentoml serve` under SEMFLOW_BACKEND=onnx-int8 of a registered bundle whose int8
export the quality guard refused: it serves the bundle's shipped fp32 ONNX export (nothing
exported where it runs), and an index built with that embedder answers its searches."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.service.serve_helpers import ADMIN, build_index, docs_for, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXTS = {"card": ["I lost my card", "my card was stolen"], "loan": ["how do I get a loan"]}
REFUSED = {
    "backend": "onnx-int8",
    "passed": False,
    "tolerance": 0.005,
    "drops": {"classifier.accuracy": 0.012},
    "reasons": ["int8 classifier.accuracy 0.9290 is 1.20 pt below fp32's 0.9410"],
}


def _register(home: Path, bundle_dir: Path) -> str:
    import mlflow

    from semflow import registry
    from semflow.config import load_settings

    uri = f"sqlite:///{home / 'mlflow.db'}"
    name = load_settings().registered_model
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=registry.ensure_experiment(uri)):
        version = registry.log_bundle(bundle_dir, tracking_uri=uri, name=name, metrics={})
    registry.client(uri).set_registered_model_alias(name, "champion", version)
    return version


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, embedder, onnx_home, onnx_embedders):
    from sklearn.linear_model import LogisticRegression

    from semflow.models.bundle import Bundle

    tmp = tmp_path_factory.mktemp("svcint8")
    home = tmp / "home"
    home.mkdir()
    texts = [t for ts in TEXTS.values() for t in ts]
    y = [label for label, ts in TEXTS.items() for _ in ts]
    clf = LogisticRegression().fit(embedder.encode(texts), y)
    # the base weights as the bundle's own embedder, shipped with their (cached) exports
    bundle = Bundle(
        embedder.model_dir,
        embedder.version,
        ["card", "loan"],
        0.0,
        {"semantic": 1.0},
        clf,
        backend_guard=REFUSED,
    )
    _register(home, bundle.save(tmp / "bundle-src", onnx_home=onnx_home))
    fp32 = onnx_embedders["onnx"]  # what the reindex builds the index with after the fallback
    build_index(home, fp32, docs_for("bank", texts))
    with serve(home, tmp, SEMFLOW_BACKEND="onnx-int8") as url:
        yield url, home, fp32


def test_a_refused_int8_export_is_served_as_fp32_onnx(svc) -> None:
    url, home, fp32 = svc
    r = httpx.post(f"{url}/embed", json={"texts": ["card stolen"]}, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == fp32.version and fp32.version.endswith("+onnx")
    hits = httpx.post(
        f"{url}/search", json={"query": "stolen card", "tenant": "bank"}, headers=ADMIN, timeout=60
    )
    assert hits.status_code == 200, hits.text  # the index's embedder is the served one
    assert hits.json()["results"][0]["text"] in TEXTS["card"]
    assert not (home / "onnx").exists()  # the bundle's own export ran: none was built
