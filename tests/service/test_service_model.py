"""The semflow Bento with a registered champion bundle, the Redis cache and a tight
concurrency limit: classify, labels, model lineage, rank, the prediction log, 429."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.serve_helpers import ADMIN, build_index, docs_for, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/0"
TRAIN = {
    "card_lost": [
        "I lost my card",
        "my card was stolen",
        "card missing",
        "where is my card, lost it",
    ],
    "password": ["reset my password", "forgot my password", "change password", "password locked"],
    "refund": ["I want a refund", "refund my purchase", "money back please", "refund not received"],
}
WEIGHTS = {"semantic": 0.5, "lexical": 0.2, "diligence": 0.3}


# In-scope validation texts: the OOS score is calibrated on them (semflow.models.oos).
VAL = {
    "card_lost": ["I can't find my card anywhere", "someone took my card"],
    "password": ["I need a new password", "my password does not work"],
    "refund": ["can I get a refund", "please refund me"],
}
OUT_OF_DOMAIN = [
    "will it rain in Paris tomorrow afternoon",
    "how long should I bake banana bread",
]
THRESHOLD: dict[str, float] = {}


def _register(home: Path, embedder) -> str:
    import mlflow

    from semflow import registry
    from semflow.config import load_settings
    from semflow.models.bundle import Bundle
    from semflow.training.params import load_pipeline_params
    from semflow.training.stages.classifier import recipe

    def texts_labels(d: dict[str, list[str]]) -> tuple[list[str], list[str]]:
        return [t for ts in d.values() for t in ts], [k for k, ts in d.items() for _ in ts]

    (xt, yt), (xv, yv) = texts_labels(TRAIN), texts_labels(VAL)
    # The champion is trained as the pipeline's classifier stage trains it (params.yaml).
    res = recipe(load_pipeline_params())(embedder.encode(xt), yt, embedder.encode(xv), yv)
    clf = res.model
    THRESHOLD["value"] = res.threshold
    bundle = Bundle(
        None,
        embedder.version,
        [str(c) for c in clf.classes_],
        res.threshold,
        WEIGHTS,
        clf,
        tags={"git_commit": "abc123"},
        operating_point={"threshold": res.threshold, "open_set_oos_recall": 0.5},
    )
    bdir = bundle.save(home / "bundle-src")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    name = load_settings().registered_model  # the model the service loads
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=registry.ensure_experiment(uri)):
        version = registry.log_bundle(bdir, tracking_uri=uri, name=name, metrics={"accuracy": 0.9})
    registry.client(uri).set_registered_model_alias(name, "champion", version)
    return version


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, embedder):
    import redis

    redis.Redis.from_url(REDIS_URL).ping()
    tmp = tmp_path_factory.mktemp("svcmodel")
    home = tmp / "home"
    home.mkdir()
    version = _register(home, embedder)
    build_index(home, embedder, docs_for("bank", ["I lost my card"]))
    with serve(home, tmp, SEMFLOW_REDIS_URL=REDIS_URL, SEMFLOW_MAX_CONCURRENCY="2") as url:
        yield url, home, version


def post(url: str, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=ADMIN, timeout=60)


def test_classify_and_prediction_log(svc) -> None:
    url, home, version = svc
    texts = ["I have lost my card", "I forgot my password", "zebra quantum violin"]
    r = post(url, "/classify", {"texts": texts + OUT_OF_DOMAIN, "top_k": 2, "tenant": "bank"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == f"semflow/{version}"
    preds = body["predictions"]
    assert [p["label"] for p in preds[:2]] == ["card_lost", "password"]
    # weather and recipes: nothing a bank's labels cover
    assert [p["label"] for p in preds[2:]] == ["unknown"] * 3
    for p in preds:
        assert len(p["alternatives"]) == 2
        assert p["alternatives"][0]["score"] == pytest.approx(p["score"])
        # "unknown" exactly when the OOS score is above the registered threshold
        assert (p["label"] == "unknown") == (p["oos_score"] > THRESHOLD["value"])
        if p["label"] != "unknown":
            assert p["label"] == p["alternatives"][0]["label"]
    from semflow.predictions import read_day

    logged = [
        x for x in read_day(home, datetime.now(UTC).date()) if x.text in texts + OUT_OF_DOMAIN
    ]
    assert [x.label for x in logged] == [p["label"] for p in preds]
    assert {x.tenant for x in logged} == {"bank"}
    assert {x.model for x in logged} == {f"semflow/{version}"}


def test_labels_model_and_health(svc) -> None:
    url, _, version = svc
    labels = httpx.get(f"{url}/labels", headers=ADMIN).json()
    assert labels["labels"] == sorted(TRAIN) and labels["threshold"] == THRESHOLD["value"]
    assert labels["operating_point"]["open_set_oos_recall"] == 0.5
    m = httpx.get(f"{url}/model", headers=ADMIN).json()
    assert (m["name"], m["version"], m["alias"]) == ("semflow", version, "champion")
    assert m["tags"]["git_commit"] == "abc123" and m["points"] == 1
    assert m["index_warm_searches"] == 1
    h = httpx.get(f"{url}/health").json()
    assert h["status"] == "ready", h
    assert h["dependencies"]["cache"] == {"status": "ok", "kind": "redis"}


def test_rank_uses_registered_weights(svc) -> None:
    url, _, _ = svc
    cands = [
        {"id": "a", "text": "the weather is nice", "features": {"diligence": 0.1}},
        {"id": "b", "text": "I lost my card at the bank", "features": {"diligence": 0.2}},
        {"id": "c", "text": "my card went missing", "features": {"diligence": 0.9}},
    ]
    r = post(url, "/rank", {"query": "lost card", "candidates": cands, "top_n": 2})
    assert r.status_code == 200, r.text
    ranking = r.json()["ranking"]
    assert len(ranking) == 2 and {x["id"] for x in ranking} <= {"b", "c"}
    for x in ranking:
        comp = x["components"]
        assert set(comp) == {"semantic", "lexical", "diligence"}
        assert x["score"] == pytest.approx(sum(WEIGHTS[k] * comp[k] for k in WEIGHTS), abs=1e-6)
    assert ranking[0]["score"] >= ranking[1]["score"]


def test_embedding_cache_in_redis(svc, embedder) -> None:
    import redis

    from semflow.embedding import text_key

    url, _, _ = svc
    text = f"cache probe {np.random.default_rng().integers(1 << 30)}"
    key = f"semflow:emb:{text_key(embedder.version, text)}"
    client = redis.Redis.from_url(REDIS_URL)
    assert client.get(key) is None
    vec = post(url, "/embed", {"texts": [text]}).json()["embeddings"][0]
    cached = np.frombuffer(client.get(key), dtype=np.float32)
    assert np.allclose(cached, vec, atol=1e-6)
    client.delete(key)


def test_classify_job_task(svc) -> None:
    url, _, _ = svc
    r = post(url, "/classify_job/submit", {"texts": ["I lost my card"] * 3})
    assert r.status_code == 200, r.text
    tid = r.json()["task_id"]
    for _ in range(200):
        st = httpx.get(f"{url}/classify_job/status", params={"task_id": tid}, headers=ADMIN).json()
        if st["status"] != "in_progress":
            break
        time.sleep(0.05)
    assert st["status"] == "completed", st
    res = httpx.get(f"{url}/classify_job/get", params={"task_id": tid}, headers=ADMIN)
    assert [p["label"] for p in res.json()["predictions"]] == ["card_lost"] * 3


def test_overload_gives_429(svc) -> None:
    url, _, _ = svc
    body = json.dumps({"texts": [f"overload text number {i} " * 20 for i in range(200)]})

    def call(_: int) -> int:
        return httpx.post(
            f"{url}/embed",
            content=body,
            headers={**ADMIN, "content-type": "application/json"},
            timeout=120,
        ).status_code

    with cf.ThreadPoolExecutor(12) as ex:
        codes = list(ex.map(call, range(12)))
    assert set(codes) <= {200, 429}
    assert 429 in codes and 200 in codes
