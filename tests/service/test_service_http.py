"""The semflow Bento over HTTP, without a registered model (degraded mode), LRU cache.

One real `bentoml serve` for the whole module; tests run in file order and the last ones
publish new index generations (hot swap, model mismatch).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.service.serve_helpers import ADMIN, BANK, build_index, docs_for, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BANK_TEXTS = [
    "I lost my card yesterday",
    "How do I reset my online banking password",
    "My transfer has not arrived yet",
    "Can I get a refund for this purchase",
]
OTHER_TEXTS = ["I lost my card on the bus", "card stolen abroad"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("svc")
    home = tmp / "home"
    build_index(
        home, embedder, docs_for("bank", BANK_TEXTS) + docs_for("other", OTHER_TEXTS, prefix="o")
    )
    with serve(home, tmp) as url:
        yield url, home


@pytest.fixture(scope="module")
def server(svc: tuple[str, Path]) -> str:
    return svc[0]


def post(url: str, path: str, body: object, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=headers or ADMIN, timeout=60)


# -- happy paths --------------------------------------------------------------------
def test_embed_returns_normalised_vectors(server: str, embedder) -> None:
    r = post(server, "/embed", {"texts": ["I lost my card", "hello"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimension"] == 384 and body["model"] == embedder.version
    import numpy as np

    vec = np.array(body["embeddings"], dtype=np.float32)
    assert vec.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-4)
    assert np.allclose(vec, embedder.encode(["I lost my card", "hello"]), atol=1e-4)
    # MiniLM ends in a Normalize layer, so unnormalised vectors are unit length too
    raw = post(server, "/embed", {"texts": ["hello"], "normalize": False})
    assert raw.status_code == 200 and len(raw.json()["embeddings"][0]) == 384


def test_embed_base64_and_float_bodies_carry_the_same_vectors(server: str) -> None:
    """/embed writes its vectors with orjson (float32 exactly) or, asked, as OpenAI's base64."""
    import base64

    import numpy as np

    texts = ["I lost my card", "hello", "where is my refund"]
    flt = post(server, "/embed", {"texts": texts})
    b64 = post(server, "/embed", {"texts": texts, "encoding_format": "base64"})
    assert flt.status_code == 200 and b64.status_code == 200, (flt.text, b64.text)
    vec = np.array(flt.json()["embeddings"], dtype=np.float32)
    rows = b64.json()["embeddings"]
    dec = np.stack([np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows])
    assert dec.shape == (3, 384) and np.array_equal(dec, vec)  # both from the LRU cache
    assert b64.json()["dimension"] == 384
    assert post(server, "/embed", {"texts": ["x"], "encoding_format": "int8"}).status_code == 422


def test_encode_batchable_endpoint(server: str) -> None:
    r = post(server, "/encode", {"texts": ["a", "b", "c"]})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 3 and len(r.json()[0]) == 384


def test_similarity(server: str) -> None:
    r = post(
        server,
        "/similarity",
        {
            "pairs": [
                ["I lost my card", "my card is lost"],
                ["I lost my card", "the weather is nice"],
                ["same", "same"],
            ]
        },
    )
    assert r.status_code == 200, r.text
    s = r.json()["scores"]
    assert s[0] > s[1] and abs(s[2] - 1.0) < 1e-4


def test_search_is_tenant_scoped(server: str) -> None:
    r = post(server, "/search", {"query": "lost card", "tenant": "bank", "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generation"] == 1
    res = body["results"]
    assert res[0]["text"] == "I lost my card yesterday"
    assert all(h["payload"]["tenant"] == "bank" for h in res)
    assert {"id", "score", "title", "text", "payload"} <= set(res[0])
    assert [h["score"] for h in res] == sorted((h["score"] for h in res), reverse=True)


def test_search_filters_and_threshold(server: str) -> None:
    r = post(
        server,
        "/search",
        {"query": "card", "tenant": "bank", "filters": {"type": "nothing-like-this"}},
    )
    assert r.status_code == 200 and r.json()["results"] == []
    r = post(
        server,
        "/search",
        {"query": "card", "tenant": "bank", "filters": {"metadata.lang": "en", "type": ["faq"]}},
    )
    assert r.status_code == 200 and len(r.json()["results"]) == 4
    r = post(server, "/search", {"query": "lost card", "tenant": "bank", "score_threshold": 0.5})
    assert r.status_code == 200
    assert 1 <= len(r.json()["results"]) < 4
    assert all(h["score"] >= 0.5 for h in r.json()["results"])


def test_search_modes(server: str) -> None:
    from semflow.config import Settings

    default = Settings.model_fields["search_mode"].default
    r = post(server, "/search", {"query": "password", "tenant": "bank", "top_k": 2})
    assert r.status_code == 200 and r.json()["mode"] == default, r.text
    # a score_threshold bounds the cosine similarity: without a mode, it means dense
    body = {"query": "password", "tenant": "bank", "score_threshold": 0.1}
    assert post(server, "/search", body).json()["mode"] == "dense"
    for mode in ("dense", "sparse", "hybrid"):
        body = {"query": "reset password", "tenant": "bank", "top_k": 2, "mode": mode}
        r = post(server, "/search", body)
        assert r.status_code == 200, r.text
        assert r.json()["mode"] == mode
        assert r.json()["results"][0]["text"] == "How do I reset my online banking password"
        assert all(h["payload"]["tenant"] == "bank" for h in r.json()["results"])
    # a word no document of the tenant holds: lexical search finds nothing ("card" is
    # only in the other tenant's documents, besides bank's "I lost my card yesterday")
    body = {"query": "stolen bus", "tenant": "bank", "mode": "sparse"}
    assert post(server, "/search", body).json()["results"] == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"mode": "fuzzy"}, "mode: Input should be 'dense', 'sparse' or 'hybrid'"),
        ({"mode": 1}, "mode: Input should be 'dense', 'sparse' or 'hybrid'"),
        ({"mode": "sparse", "score_threshold": 0.5}, "only mode 'dense' takes one"),
        ({"mode": "hybrid", "score_threshold": 0.5}, "only mode 'dense' takes one"),
    ],
)
def test_bad_search_mode_is_422_with_a_sentence(server: str, body: dict, says: str) -> None:
    r = post(server, "/search", {"query": "card", "tenant": "bank", **body})
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]


def test_tenant_cannot_be_widened_by_filters(server: str) -> None:
    r = post(server, "/search", {"query": "card", "tenant": "bank", "filters": {"tenant": "other"}})
    assert r.status_code == 422 and "tenant" in r.json()["error"]
    r = post(server, "/search", {"query": "card", "tenant": "bank", "filters": {"bogus": 1}})
    assert r.status_code == 422 and "bogus" in r.json()["error"]


# -- auth -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
)
def test_auth_required(server: str, headers: dict) -> None:
    for path, body in [("/embed", {"texts": ["x"]}), ("/search", {"query": "x", "tenant": "bank"})]:
        r = httpx.post(f"{server}{path}", json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert "key" in r.json()["error"].lower()
    assert httpx.get(f"{server}/model", headers=headers).status_code == 401


def test_probes_and_metrics_are_open(server: str) -> None:
    for path in ("/livez", "/readyz", "/metrics", "/health"):
        assert httpx.get(f"{server}{path}").status_code == 200, path
    assert "bentoml" in httpx.get(f"{server}/metrics").text


def test_scoped_key(server: str) -> None:
    assert post(server, "/search", {"query": "card", "tenant": "bank"}, BANK).status_code == 200
    r = post(server, "/search", {"query": "card", "tenant": "other"}, BANK)
    assert r.status_code == 403 and "other" in r.json()["error"]
    r = post(server, "/search", {"query": "card", "tenant": "other"}, ADMIN)
    assert r.status_code == 200 and all(
        h["payload"]["tenant"] == "other" for h in r.json()["results"]
    )


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", {"texts": []}),
        ("/embed", {"texts": [""]}),
        ("/embed", {"texts": "not a list"}),
        ("/embed", {"texts": [1, 2]}),
        ("/embed", {"text": ["x"]}),
        ("/embed", ["x"]),
        ("/similarity", {"pairs": []}),
        ("/similarity", {"pairs": [["only one"]]}),
        ("/search", {"query": "", "tenant": "bank"}),
        ("/search", {"query": "x"}),
        ("/search", {"query": "x", "tenant": "bank", "top_k": 0}),
        ("/search", {"query": "x", "tenant": "bank", "top_k": 1000}),
        ("/classify", {"texts": []}),
        ("/rank", {"query": "x", "candidates": []}),
        (
            "/rank",
            {"query": "x", "candidates": [{"id": "a", "text": "t", "features": {"f": "hi"}}]},
        ),
    ],
)
def test_invalid_body_is_422(server: str, path: str, body: object) -> None:
    r = post(server, path, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]


def test_invalid_json_is_422(server: str) -> None:
    for raw in (b'{"texts": [', b"\xff\xfe", b""):
        r = httpx.post(
            f"{server}/embed", content=raw, headers={**ADMIN, "content-type": "application/json"}
        )
        assert r.status_code == 422, r.text
        assert "JSON" in r.json()["error"]


def test_limits_are_413(server: str) -> None:
    r = post(server, "/embed", {"texts": ["x"] * 257})
    assert r.status_code == 413 and "too many" in r.json()["error"]
    r = post(server, "/embed", {"texts": ["ok", "y" * 4001]})
    assert r.status_code == 413 and "4000" in r.json()["error"]
    r = post(server, "/search", {"query": "q" * 5000, "tenant": "bank"})
    assert r.status_code == 413
    big = b'{"texts": ["' + b"z" * 1_100_000 + b'"]}'
    r = httpx.post(
        f"{server}/embed", content=big, headers={**ADMIN, "content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]


# -- degraded mode -------------------------------------------------------------------------
def test_degraded_without_registered_model(server: str) -> None:
    r = post(server, "/classify", {"texts": ["I lost my card"]})
    assert r.status_code == 503 and "no classifier registered" in r.json()["error"]
    r = post(server, "/rank", {"query": "card", "candidates": [{"id": "a", "text": "card"}]})
    assert r.status_code == 503 and "no classifier registered" in r.json()["error"]
    assert httpx.get(f"{server}/labels", headers=ADMIN).status_code == 503
    h = httpx.get(f"{server}/health").json()
    assert h["status"] == "degraded"
    assert h["dependencies"]["classifier"]["status"] == "missing"
    assert h["dependencies"]["index"]["status"] == "ok"
    assert httpx.get(f"{server}/readyz").status_code == 200
    m = httpx.get(f"{server}/model", headers=ADMIN).json()
    assert m["version"] is None and m["dimension"] == 384 and m["points"] == 6
    assert m["index_warm_searches"] == 6  # every point, fewer than index_warm_queries


def test_embed_job_task(server: str) -> None:
    r = post(server, "/embed_job/submit", {"texts": ["a", "b"]})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    for _ in range(100):
        st = httpx.get(f"{server}/embed_job/status", params={"task_id": task_id}, headers=ADMIN)
        if st.json()["status"] != "in_progress":
            break
        time.sleep(0.1)
    assert st.json()["status"] == "completed", st.text
    res = httpx.get(f"{server}/embed_job/get", params={"task_id": task_id}, headers=ADMIN)
    assert len(res.json()["embeddings"]) == 2
    assert post(server, "/embed_job/submit", {"texts": []}).status_code == 422
    assert httpx.post(f"{server}/embed_job/submit", json={"texts": ["a"]}).status_code == 401


# -- index generations ------------------------------------------------------------------
def test_hot_swap_without_failed_requests(svc: tuple[str, Path], embedder) -> None:
    server, home = svc
    failures: list[str] = []
    gens: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(headers=ADMIN, timeout=30) as c:
            while not stop.is_set():
                r = c.post(f"{server}/search", json={"query": "gold card", "tenant": "bank"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    gens.append(r.json()["generation"])

    t = threading.Thread(target=loop)
    t.start()
    try:
        time.sleep(0.5)
        new_gen = build_index(
            home, embedder, docs_for("bank", ["How do I order a gold card"], prefix="n")
        )
        published = time.monotonic()
        while time.monotonic() - published < 5 and (not gens or gens[-1] != new_gen):
            time.sleep(0.05)
        swap_s = time.monotonic() - published
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert failures == []
    assert gens[-1] == new_gen and swap_s < 5, (gens[-5:], swap_s)
    assert len(gens) > 10
    top = post(server, "/search", {"query": "gold card", "tenant": "bank", "top_k": 1}).json()
    assert top["results"][0]["text"] == "How do I order a gold card"


def test_search_finds_a_long_documents_last_chunk_once(
    svc: tuple[str, Path], embedder, tmp_path: Path
) -> None:
    """A 20k-character document synced into the served index: `/search` finds the fact in
    its last chunk and returns the document once, the chunk as its text."""
    import json

    from semflow.app import Services
    from semflow.config import load_settings
    from semflow.sources import FieldMapping, FileSource
    from semflow.sync import run_sync
    from tests.helpers import FACT, FACT_QUERY, long_text

    server, home = svc
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "text": long_text(20_000), "tenant": "bank"}))
    s = load_settings(home=home)
    src = FileSource("long", path, FieldMapping(updated_at=None, tenant="tenant"))
    gen = run_sync(src, Services.from_settings(s, embedder=embedder)).generation
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = post(server, "/search", {"query": FACT_QUERY, "tenant": "bank", "top_k": 10})
        if r.json()["generation"] == gen:
            break
        time.sleep(0.1)
    results = r.json()["results"]
    assert r.json()["generation"] == gen
    assert results[0]["payload"]["doc_id"] == "long" and FACT in results[0]["text"]
    assert results[0]["payload"]["chunk_no"] == results[0]["payload"]["chunks"] - 1 > 5
    assert [x["payload"]["doc_id"] for x in results].count("long") == 1


def test_reindex_with_another_embedder_keeps_the_matching_generation(
    svc: tuple[str, Path], embedder
) -> None:
    """A promotion re-indexes with a new embedder: a server still running the old model keeps
    answering from the newest generation its queries fit, and says it is behind."""
    server, home = svc
    before = post(server, "/search", {"query": "card", "tenant": "bank"})
    assert before.status_code == 200
    served = before.json()["generation"]
    gen = build_index(home, embedder, docs_for("bank", ["x"]), embedder_version="other-model@abc")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(f"{server}/model", headers=ADMIN).json()["index_live_generation"] == gen:
            break
        time.sleep(0.1)
    for _ in range(5):  # every search, not only the first after the swap
        r = post(server, "/search", {"query": "card", "tenant": "bank"})
        assert r.status_code == 200, r.text
        assert r.json()["generation"] == served and r.json()["results"]
    time.sleep(1.1)  # past the health page's one-second cache
    index = httpx.get(f"{server}/health").json()["dependencies"]["index"]
    assert index["status"] == "behind" and index["live"] == gen
    assert index["generation"] == served and "other-model@abc" in index["detail"]
    m = httpx.get(f"{server}/model", headers=ADMIN).json()
    assert m["index_generation"] == served and m["index_behind_live"] is True
    assert post(server, "/embed", {"texts": ["still works"]}).status_code == 200


def test_a_generation_without_sparse_vectors_answers_dense(svc: tuple[str, Path], embedder) -> None:
    """An index built before hybrid search: dense answers, a named sparse/hybrid mode is a
    409 with a sentence, and a request naming no mode falls back to dense."""
    from semflow.config import load_settings
    from semflow.index.qdrant_edge import EdgeStore

    server, home = svc
    s = load_settings(home=home)
    store = EdgeStore(s.index_dir / s.collection)  # no lexical encoder: dense only
    docs = docs_for("bank", BANK_TEXTS)
    with store.writer(embedder.version, embedder.dimension, fresh=True) as w:
        w.upsert(
            [d.point_id for d in docs],
            embedder.encode([d.text for d in docs]),
            [d.payload(embedder.version) for d in docs],
        )
    gen = store.live_generation()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(f"{server}/model", headers=ADMIN).json()["index_generation"] == gen:
            break
        time.sleep(0.1)
    r = post(server, "/search", {"query": "password", "tenant": "bank", "top_k": 1})
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == gen and r.json()["mode"] == "dense"
    for mode in ("sparse", "hybrid"):
        r = post(server, "/search", {"query": "password", "tenant": "bank", "mode": mode})
        assert r.status_code == 409, r.text
        assert "no sparse vectors" in r.json()["error"] and "full refresh" in r.json()["error"]
    r = post(server, "/search", {"query": "password", "tenant": "bank", "mode": "dense"})
    assert r.status_code == 200 and r.json()["results"]


def test_no_generation_of_this_embedder_is_409(tmp_path: Path, embedder) -> None:
    home = tmp_path / "home"
    build_index(home, embedder, docs_for("bank", ["x"]), embedder_version="other-model@abc")
    with serve(home, tmp_path) as url:
        r = post(url, "/search", {"query": "card", "tenant": "bank"})
        assert r.status_code == 409, r.text
        assert "other-model@abc" in r.json()["error"]
        assert httpx.get(f"{url}/health").json()["dependencies"]["index"]["status"] == "mismatch"
        assert post(url, "/embed", {"texts": ["still works"]}).status_code == 200


def test_a_damaged_generation_is_not_served_until_restored(tmp_path: Path, embedder) -> None:
    """A live generation whose files an interrupted copy lost: a server with nothing else to
    serve answers searches 503 with the reason; one that serves a generation keeps it and
    /health says why; both swap to the generation once it is whole."""
    from semflow.config import load_settings
    from semflow.index.edge_tier import durable_write
    from tests.helpers import lose_id_trackers

    home = tmp_path / "home"
    good = build_index(home, embedder, docs_for("bank", BANK_TEXTS))
    damaged = build_index(home, embedder, docs_for("bank", ["card stolen abroad"], prefix="n"))
    s = load_settings(home=home)
    root = s.index_dir / s.collection
    restore = lose_id_trackers(root / f"gen-{damaged:06d}", tmp_path / "lost")

    def index_health(status: str) -> dict:
        deadline, index = time.monotonic() + 20, {}
        while time.monotonic() < deadline and index.get("status") != status:
            time.sleep(0.5)
            index = httpx.get(f"{url}/health").json()["dependencies"]["index"]
        assert index["status"] == status, index
        return index

    def searched(generation: int, query: str = "card") -> httpx.Response:
        deadline = time.monotonic() + 60  # the back-off's next try, then the warm-up
        while True:
            r = post(url, "/search", {"query": query, "tenant": "bank", "top_k": 1})
            if r.status_code == 200 and r.json()["generation"] == generation:
                return r
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)

    with serve(home, tmp_path) as url:  # started with the damaged generation live
        index = index_health("failing")
        assert index["generation"] is None and index["live"] == damaged
        assert f"index generation {damaged} is incomplete" in index["detail"]
        r = post(url, "/search", {"query": "card", "tenant": "bank"})
        assert r.status_code == 503 and "is incomplete" in r.json()["error"], r.text
        assert post(url, "/embed", {"texts": ["still works"]}).status_code == 200

        durable_write(root / "LIVE", str(good))  # an operator points LIVE back: served at once
        searched(good)
        index_health("ok")
        durable_write(root / "LIVE", str(damaged))  # ... and forward again
        index = index_health("failing")
        assert index["generation"] == good and index["live"] == damaged
        assert "try 1 failed" in index["detail"]
        r = post(url, "/search", {"query": "card", "tenant": "bank"})
        assert r.status_code == 200 and r.json()["generation"] == good and r.json()["results"]

        restore()
        r = searched(damaged, "stolen abroad")
        assert r.json()["results"][0]["text"] == "card stolen abroad"
        index_health("ok")


def test_slow_request_is_504_and_the_server_stays_up(tmp_path: Path, embedder) -> None:
    """A request past SEMFLOW_REQUEST_TIMEOUT_S is cut off with a 504 sentence, not a hang."""
    home = tmp_path / "home"
    build_index(home, embedder, docs_for("bank", BANK_TEXTS))
    with serve(home, tmp_path, SEMFLOW_REQUEST_TIMEOUT_S="0.5", SEMFLOW_CACHE_SIZE="0") as url:
        slow = {"texts": [f"{i} " + "a fairly long sentence about cards " * 60 for i in range(256)]}
        t0 = time.monotonic()
        r = post(url, "/embed", slow)
        assert r.status_code == 504, r.text
        assert "seconds" in r.json()["error"] and time.monotonic() - t0 < 30
        time.sleep(1)
        r = post(url, "/similarity", {"pairs": [["card", "card"]]})
        assert r.status_code in (200, 504)  # the cut-off batch may still hold the model briefly
        deadline = time.monotonic() + 60
        while r.status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)
            r = post(url, "/similarity", {"pairs": [["card", "card"]]})
        assert r.status_code == 200 and r.json()["scores"][0] > 0.99
        # the micro-batcher survived the cancelled request: once the abandoned batch's
        # current chunk is done, /embed and /search answer again (before the fix: 504 forever)
        deadline = time.monotonic() + 60
        r = post(url, "/embed", {"texts": ["after the timeout"]})
        while r.status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)
            r = post(url, "/embed", {"texts": ["after the timeout"]})
        assert r.status_code == 200, r.text
        for i in range(3):
            assert post(url, "/embed", {"texts": [f"after the timeout {i}"]}).status_code == 200
            r = post(url, "/search", {"query": f"lost card {i}", "tenant": "bank", "top_k": 2})
            assert r.status_code == 200 and r.json()["results"], r.text
        h = httpx.get(f"{url}/health").json()
        assert h["dependencies"]["batcher"] == {"status": "ok"}
