"""The OpenAI- and Cohere-compatible routes of a real `bentoml serve`, through the peers'
own clients (openai, cohere, LangChain's OpenAIEmbeddings) and raw HTTP for every error
case, which must come back as a 4xx in the peer's own error shape.

One server for the module, with a registered champion bundle (the ranker behind
/v1/rerank) and no index (embeddings and rerank need none).
"""

from __future__ import annotations

import base64
import json

import cohere
import httpx
import numpy as np
import openai
import pytest
from cohere.core.api_error import ApiError as CohereApiError

from tests.service.serve_helpers import ADMIN, BANK, KEYS, OTHER, serve
from tests.service.test_service_model import _register

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = [
    "I lost my card yesterday",
    "How do I reset my online banking password",
    "The weather is nice today",
    "my card was stolen on the bus",
]
MODEL = "<served>"  # placeholder in parametrised bodies: the served embedding model's id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder) -> str:
    tmp = tmp_path_factory.mktemp("compat")
    home = tmp / "home"
    home.mkdir()
    _register(home, embedder)
    with serve(home, tmp) as url:
        yield url


@pytest.fixture(scope="module")
def ranker_id(server: str) -> str:
    info = httpx.get(f"{server}/model", headers=ADMIN, timeout=30).json()
    return f"{info['name']}/{info['version']}"


def client(url: str, key: str = KEYS["admin"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def post(url: str, path: str, body: object, headers: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", json=body, headers=ADMIN if headers is None else headers, timeout=60
    )


def openai_error(r: httpx.Response, status: int) -> dict:
    """The OpenAI error object of a response, after checking status and shape."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error", err
    return err


def cohere_error(r: httpx.Response, status: int) -> str:
    """The Cohere error message of a response, after checking status and shape."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"message"} and isinstance(body["message"], str), body
    return body["message"]


def native_embed(url: str, texts: list[str]) -> np.ndarray:
    r = post(url, "/embed", {"texts": texts})
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"], dtype=np.float32)


# -- OpenAI: embeddings and models ------------------------------------------------------
def test_openai_client_embeddings_are_the_native_vectors(server: str, embedder) -> None:
    texts = ["I lost my card", "How do I reset my password?"]
    res = client(server).embeddings.create(
        model=embedder.version, input=texts, encoding_format="float"
    )
    assert res.object == "list" and res.model == embedder.version
    assert [d.index for d in res.data] == [0, 1]
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert got.shape == (2, 384)
    assert np.allclose(got, native_embed(server, texts), atol=1e-6)
    assert np.allclose(got, embedder.encode(texts), atol=1e-4)
    # usage: the model's own tokenizer, [CLS] and [SEP] included
    expected = sum(len(ids) for ids in embedder.model.tokenizer(texts)["input_ids"])
    assert res.usage.prompt_tokens == res.usage.total_tokens == expected
    one = client(server).embeddings.create(
        model=embedder.version, input=texts[0], encoding_format="float"
    )
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, got[0], atol=1e-6)


def test_usage_counts_the_tokens_the_model_reads(server: str, embedder) -> None:
    long = "account " * 450  # under max_text_chars, far past the 256-token window
    res = client(server).embeddings.create(
        model=embedder.version, input=[long, "hi"], encoding_format="float"
    )
    hi = len(embedder.model.tokenizer("hi")["input_ids"])
    assert res.usage.prompt_tokens == embedder.max_seq_length + hi


def test_base64_decodes_to_the_float_vectors(server: str, embedder) -> None:
    texts = ["card stolen abroad", "refund please", "hello"]
    c = client(server)
    floats = np.array(
        [
            d.embedding
            for d in c.embeddings.create(
                model=embedder.version, input=texts, encoding_format="float"
            ).data
        ]
    )
    b64 = c.embeddings.create(model=embedder.version, input=texts, encoding_format="base64")
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data]
    )
    assert decoded.shape == (3, 384)
    assert np.allclose(decoded, floats, atol=1e-6)
    # without encoding_format the client asks for base64 and decodes it itself
    default = c.embeddings.create(model=embedder.version, input=texts)
    assert np.allclose(np.array([d.embedding for d in default.data]), floats, atol=1e-6)


def test_models_lists_the_embedder_and_the_ranker(server: str, embedder, ranker_id: str) -> None:
    models = list(client(server).models.list())
    assert [m.id for m in models] == [embedder.version, ranker_id]
    assert all(m.object == "model" and m.owned_by == "semflow" and m.created > 0 for m in models)


def test_wrong_key_is_an_openai_authentication_error(server: str, embedder) -> None:
    bad = client(server, key="not-a-key")
    with pytest.raises(openai.AuthenticationError) as e:
        bad.embeddings.create(model=embedder.version, input="hello")
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    for method, path in [("POST", "/v1/embeddings"), ("GET", "/v1/models")]:
        r = httpx.request(method, f"{server}{path}", json={"input": "x", "model": "m"})
        assert "key" in openai_error(r, 401)["message"].lower()


def test_unknown_model_is_an_openai_not_found(server: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(server).embeddings.create(model="text-embedding-3-small", input="hello")
    assert e.value.code == "model_not_found" and e.value.param == "model"
    assert "GET /v1/models" in e.value.message


def test_dimensions_only_as_the_models_own(server: str, embedder) -> None:
    c = client(server)
    same = c.embeddings.create(
        model=embedder.version, input="hi", dimensions=384, encoding_format="float"
    )
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.embeddings.create(model=embedder.version, input="hi", dimensions=128)
    assert e.value.param == "dimensions" and "384" in e.value.message


def test_user_is_accepted_and_ignored(server: str, embedder) -> None:
    a = client(server).embeddings.create(
        model=embedder.version, input="hi", user="someone", encoding_format="float"
    )
    assert np.allclose(a.data[0].embedding, native_embed(server, ["hi"])[0], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        ({"input": [], "model": MODEL}, 422, "input", "empty"),
        ({"input": "", "model": MODEL}, 422, "input", "empty"),
        ({"input": ["ok", ""], "model": MODEL}, 422, "input", "input[1]"),
        ({"input": [1, 2, 3], "model": MODEL}, 422, "input", "token arrays"),
        ({"input": [[1, 2], [3]], "model": MODEL}, 422, "input", "token arrays"),
        ({"input": 5, "model": MODEL}, 422, "input", "a string or a list of strings"),
        ({"input": ["a", {"text": "b"}], "model": MODEL}, 422, "input", "input[1]"),
        ({"input": "a"}, 422, "model", "required"),
        ({"input": "a", "model": 7}, 422, "model", "string"),
        (
            {"input": "a", "model": MODEL, "encoding_format": "int8"},
            422,
            "encoding_format",
            "base64",
        ),
        ({"input": "a", "model": MODEL, "dimensions": "big"}, 422, "dimensions", "integer"),
        ({"input": "a", "model": MODEL, "dimensions": 128}, 422, "dimensions", "384"),
        ({"input": "a", "model": MODEL, "temperature": 1}, 422, "temperature", "not permitted"),
        ({"input": ["x"] * 257, "model": MODEL}, 413, None, "too many texts"),
        ({"input": ["x" * 4001], "model": MODEL}, 413, None, "4001 characters"),
        ({"input": "a", "model": "text-embedding-3-small"}, 404, "model", "not served"),
        ([], 422, None, "invalid request"),
    ],
)
def test_embeddings_errors_in_openai_shape(
    server: str, embedder, body: object, status: int, param: str | None, fragment: str
) -> None:
    if isinstance(body, dict) and body.get("model") == MODEL:
        body = {**body, "model": embedder.version}
    err = openai_error(post(server, "/v1/embeddings", body), status)
    assert err["param"] == param and fragment in err["message"], err


def test_malformed_and_oversized_bodies_in_openai_shape(server: str, embedder) -> None:
    url = f"{server}/v1/embeddings"
    r = httpx.post(url, content=b"{not json", headers={**ADMIN, "content-type": "application/json"})
    assert "not valid JSON" in openai_error(r, 422)["message"]
    big = json.dumps({"input": ["word " * 700] * 300, "model": embedder.version})
    assert len(big) > 1_000_000  # the guard's max_body_bytes
    err = openai_error(httpx.post(url, content=big, headers=ADMIN, timeout=60), 413)
    assert err["code"] == "request_too_large" and "limit" in err["message"]
    # the router's answers too: a wrong method
    assert openai_error(httpx.get(url, headers=ADMIN), 405)["code"] == "method_not_allowed"
    assert openai_error(post(server, "/v1/models", {}), 405)


# -- Cohere: rerank ---------------------------------------------------------------------
def test_cohere_client_rerank_is_the_native_ranking(server: str, ranker_id: str) -> None:
    co = cohere.Client(api_key=KEYS["admin"], base_url=server, timeout=60)
    res = co.rerank(
        model=ranker_id, query="lost card", documents=DOCS, top_n=3, return_documents=True
    )
    assert len(res.results) == 3
    scores = [r.relevance_score for r in res.results]
    assert scores == sorted(scores, reverse=True)
    assert {res.results[0].index, res.results[1].index} == {0, 3}  # the two card texts
    assert all(r.document.text == DOCS[r.index] for r in res.results)
    native = post(
        server,
        "/rank",
        {
            "query": "lost card",
            "candidates": [{"id": str(i), "text": d} for i, d in enumerate(DOCS)],
        },
    )
    assert native.status_code == 200, native.text
    expected = [(int(x["id"]), x["score"]) for x in native.json()["ranking"][:3]]
    assert [r.index for r in res.results] == [i for i, _ in expected]
    assert np.allclose(scores, [s for _, s in expected], atol=1e-6)
    # no model named, no documents asked for: every document, indices and scores only
    bare = co.rerank(query="lost card", documents=DOCS)
    assert len(bare.results) == 4 and all(r.document is None for r in bare.results)


def test_rerank_documents_as_objects_come_back_whole(server: str, ranker_id: str) -> None:
    docs = [{"text": DOCS[2], "id": "w"}, {"text": DOCS[0], "id": "c", "lang": "en"}]
    r = post(
        server,
        "/v1/rerank",
        {"query": "lost card", "documents": docs, "return_documents": True, "top_n": 1},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == ranker_id and body["id"]
    [top] = body["results"]
    assert top["index"] == 1 and top["document"] == docs[1]
    mixed = post(server, "/v1/rerank", {"query": "lost card", "documents": [DOCS[2], docs[1]]})
    assert [x["index"] for x in mixed.json()["results"]] == [1, 0]


def test_cohere_client_errors(server: str) -> None:
    with pytest.raises(CohereApiError) as e:
        cohere.Client(api_key="not-a-key", base_url=server).rerank(query="q", documents=["a"])
    assert e.value.status_code == 401 and "key" in e.value.body["message"].lower()
    with pytest.raises(CohereApiError) as e:
        cohere.Client(api_key=KEYS["admin"], base_url=server).rerank(
            model="rerank-v3.5", query="q", documents=["a"]
        )
    assert e.value.status_code == 404 and "not served" in e.value.body["message"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"query": "q", "documents": []}, 422, "empty"),
        ({"query": "q"}, 422, "documents: Field required"),
        ({"query": "", "documents": ["a"]}, 422, "query"),
        ({"query": 3, "documents": ["a"]}, 422, "query"),
        ({"query": "q", "documents": "a"}, 422, "list of strings or objects"),
        ({"query": "q", "documents": [1]}, 422, "documents[0]"),
        ({"query": "q", "documents": ["a", ""]}, 422, "documents[1]"),
        ({"query": "q", "documents": [{"title": "x"}]}, 422, "'text'"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, 422, "return_documents"),
        ({"query": "q", "documents": ["a"], "rank_fields": ["title"]}, 422, "rank_fields"),
        ({"query": "q", "documents": ["a"] * 257}, 413, "too many texts"),
        ({"query": "q", "documents": ["x" * 4001]}, 413, "4001 characters"),
        ({"query": "x" * 4001, "documents": ["a"]}, 413, "4001 characters"),
        ({"query": "q", "documents": ["a"], "model": "rerank-v3.5"}, 404, "not served"),
        ([], 422, "invalid request"),
    ],
)
def test_rerank_errors_in_cohere_shape(
    server: str, body: object, status: int, fragment: str
) -> None:
    assert fragment in cohere_error(post(server, "/v1/rerank", body), status)


def test_rerank_guard_answers_in_cohere_shape(server: str) -> None:
    url = f"{server}/v1/rerank"
    assert "key" in cohere_error(httpx.post(url, json={"query": "q", "documents": ["a"]}), 401)
    r = httpx.post(url, content=b"[[[", headers={**ADMIN, "content-type": "application/json"})
    assert "JSON" in cohere_error(r, 422)
    big = json.dumps({"query": "q", "documents": ["word " * 700] * 300})
    assert "limit" in cohere_error(httpx.post(url, content=big, headers=ADMIN, timeout=60), 413)
    cohere_error(httpx.get(url, headers=ADMIN), 405)


# -- the same keys as the native routes ---------------------------------------------------
@pytest.mark.parametrize("headers", [BANK, OTHER], ids=["bank", "other"])
def test_tenant_keys_behave_as_on_native_routes(
    server: str, embedder, ranker_id: str, headers: dict
) -> None:
    # No tenant data behind embeddings or rerank: any valid key may use them, as /embed, /rank.
    assert post(server, "/embed", {"texts": ["hi"]}, headers).status_code == 200
    r = post(server, "/v1/embeddings", {"input": "hi", "model": embedder.version}, headers)
    assert r.status_code == 200 and len(r.json()["data"]) == 1, r.text
    assert httpx.get(f"{server}/v1/models", headers=headers).status_code == 200
    rank = {"query": "q", "candidates": [{"id": "0", "text": "a"}]}
    assert post(server, "/rank", rank, headers).status_code == 200
    r = post(server, "/v1/rerank", {"query": "q", "documents": ["a"], "model": ranker_id}, headers)
    assert r.status_code == 200 and r.json()["results"][0]["index"] == 0, r.text


# -- LangChain's OpenAI adapter -----------------------------------------------------------
def test_langchain_openai_embeddings(server: str, embedder) -> None:
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(
        model=embedder.version,
        base_url=f"{server}/v1",
        api_key=KEYS["admin"],
        # send text, not tiktoken ids (this server refuses token arrays), at most 256 a call
        check_embedding_ctx_length=False,
        chunk_size=256,
        max_retries=0,
    )
    docs = lc.embed_documents(DOCS)
    assert np.allclose(np.array(docs), embedder.encode(DOCS), atol=1e-4)
    assert np.allclose(lc.embed_query(DOCS[0]), docs[0], atol=1e-6)
