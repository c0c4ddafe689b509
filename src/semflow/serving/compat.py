"""OpenAI- and Cohere-compatible routes: request parsing and response shaping only.

`POST /v1/embeddings` and `GET /v1/models` speak OpenAI's shapes, `POST /v1/rerank` the
Cohere (v1) / Jina one. Every answer comes from the `Engine` the native routes use: the
embeddings from its micro-batcher (as `/embed`), the rerank scores from `Engine.rank` (as
`/rank`, the registered ranker's weights). Auth, body size, JSON and schema checks are the
guard's, as on every route (`semflow.serving.http`); the bodies are in
`semflow.serving.schemas` (`ROUTES`).

Errors use the peer's own shape: `{"error": {"message", "type", "param", "code"}}` on the
OpenAI routes, `{"message": ...}` (Cohere's) on `/v1/rerank`. The status is the one the
native routes give for the same fault (401/403 auth, 404 unknown model or route, 413 too
many or too long texts or too big a body, 422 a malformed body, 503 nothing to serve yet).
`PeerErrorShape` reshapes the answers produced before a compatible route runs (the guard's,
a missing route's) so a client of these routes only ever reads its peer's shape.

`model` is checked, as vLLM and infinity do (TEI ignores it): the embedding id is the
embedder's version, `name@<12 hex>`, so a client holding vectors of one model is refused
(404) by a server that now serves another, as `/search` refuses an index built with a
different model. `usage.prompt_tokens` counts the tokens the model read: the model's own
tokenizer, special tokens included, cut at its window (`max_seq_length`) as the model cuts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from semflow.serving.errors import ApiError, NotFound, error_answer, is_bug
from semflow.serving.http import ASGIApp, Message, Receive, Scope, Send, encode_vectors
from semflow.serving.schemas import (
    Candidate,
    OpenAIEmbeddingsRequest,
    RankRequest,
    RerankRequest,
    parse,
)

log = logging.getLogger(__name__)

PREFIX = "/v1/"
RERANK_PATH = "/v1/rerank"
OWNER = "semflow"
# OpenAI's `type` and `code` for each status; a 404 on `model` is `model_not_found`.
_OPENAI_KIND: dict[int, tuple[str, str | None]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}
# The field a schema error names: `semflow.serving.schemas.describe` writes
# "invalid request: <field>[.<index>...]: <what>".
_FIELD = re.compile(r"^invalid request: ([A-Za-z_][A-Za-z0-9_]*)[.:]")


class CompatError(ApiError):
    """An error of a compatible route that names the request field at fault."""

    def __init__(
        self, message: str, status: int, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, status)
        self.param = param
        self.code = code


def error_body(
    path: str, status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The peer's error body for `path`: Cohere's on /v1/rerank, OpenAI's elsewhere."""
    if path.rstrip("/") == RERANK_PATH:
        return {"message": message}
    kind, default_code = _OPENAI_KIND.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    if param is None:
        m = _FIELD.match(message)
        param = m[1] if m and m[1] != "body" else None  # "body": the whole body is wrong
    return {
        "error": {"message": message, "type": kind, "param": param, "code": code or default_code}
    }


def error_response(path: str, err: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, body) for an error raised by a compatible route, in the peer's shape: the
    sentence of `error_answer` (a bug's stays in the log), and for a client error the
    parameter and code it names."""
    status, answer = error_answer(err)
    if is_bug(status):
        return status, error_body(path, status, answer["error"])
    return status, error_body(
        path, status, answer["error"], getattr(err, "param", None), getattr(err, "code", None)
    )


def _is_peer_shape(path: str, body: Any) -> bool:
    if path.rstrip("/") == RERANK_PATH:
        return isinstance(body, dict) and set(body) == {"message"}
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def reshape_error(path: str, status: int, body: bytes) -> bytes:
    """An error body of the app (`{"error": sentence}` or plain text) in the peer's shape."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        data = None
    if _is_peer_shape(path, data):
        return body
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
    else:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    return json.dumps(error_body(path, status, message)).encode()


class PeerErrorShape:
    """Pure ASGI, in front of the guard: gives an error answer on a /v1/ path the peer's
    shape, whoever wrote it (the guard's 401/413/422, a 404/405 of the router). Other paths
    and successful answers pass through untouched and unbuffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            return await self.app(scope, receive, send)
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_shaped(msg: Message) -> None:
            nonlocal start
            if msg["type"] == "http.response.start" and msg["status"] >= 400:
                start = msg  # held until the body is complete
                return
            if start is None or msg["type"] != "http.response.body":
                return await send(msg)
            chunks.append(msg.get("body", b""))
            if msg.get("more_body", False):
                return
            body = reshape_error(path, start["status"], b"".join(chunks))
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_shaped)


class TokenCounter:
    """Tokens the model reads from each text, counted by a private copy of its tokenizer
    (`onnx_backend.private_tokenizer`). A model without a fast tokenizer falls back to the
    micro-batcher's estimate (~4 characters a token, capped at the window)."""

    def __init__(self, embedder: Any, estimate: Callable[[str], int]) -> None:
        from semflow.onnx_backend import private_tokenizer

        self.estimate = estimate
        self.exact = False
        self._tok: Any = None
        try:
            tok = private_tokenizer(embedder.tokenizer, int(embedder.max_seq_length))
            self._tok, self.exact = tok, True
        except Exception as err:  # any other model: an honest estimate, said in the log
            log.warning("token counts are estimated: no fast tokenizer (%s)", err)

    def count(self, texts: Sequence[str]) -> int:
        if self._tok is None:
            return sum(self.estimate(t) for t in texts)
        return sum(len(e.ids) for e in self._tok.encode_batch(list(texts)))


class CompatAPI:
    """The compatible routes over one `Engine`; methods take the decoded JSON body."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.created = int(time.time())  # when this server loaded its models
        self.tokens = TokenCounter(engine.embedder, engine.batcher.cost)

    # -- ids ------------------------------------------------------------------------
    @property
    def embedding_model(self) -> str:
        return str(self.engine.embedder.version)

    @property
    def ranker_model(self) -> str | None:
        """The registered ranker's id, when a bundle that can rank is loaded."""
        bundle = self.engine.bundle
        if bundle is None or getattr(bundle, "classifier", None) is None:
            return None
        return str(self.engine.model_ref)

    def models(self) -> dict[str, Any]:
        """`GET /v1/models`: the embedder, and the ranker when one is registered."""
        entries = [(self.embedding_model, ["embed"])]
        if self.ranker_model is not None:
            entries.append((self.ranker_model, ["rerank"]))
        return {
            "object": "list",
            "data": [
                {
                    "id": mid,
                    "object": "model",
                    "created": self.created,
                    "owned_by": OWNER,
                    "capabilities": caps,  # as infinity: which route serves it
                }
                for mid, caps in entries
            ],
        }

    # -- embeddings -----------------------------------------------------------------
    async def embeddings(self, body: Any) -> dict[str, Any]:
        """`POST /v1/embeddings`: normalised vectors through the shared micro-batcher."""
        req = cast(OpenAIEmbeddingsRequest, parse(OpenAIEmbeddingsRequest, body))
        if req.model != self.embedding_model:
            raise CompatError(
                f"the model {req.model!r} is not served here; this server embeds with "
                f"{self.embedding_model!r} (GET /v1/models lists it)",
                404,
                param="model",
                code="model_not_found",
            )
        dim = int(self.engine.dimension)
        if req.dimensions is not None and req.dimensions != dim:
            raise CompatError(
                f"dimensions={req.dimensions} is not supported: {self.embedding_model} "
                f"returns {dim}-dimensional vectors and does not shorten them",
                422,
                param="dimensions",
            )
        texts = req.texts
        vectors, tokens = await asyncio.gather(
            self.engine.batcher.encode(texts), asyncio.to_thread(self.tokens.count, texts)
        )
        rows = encode_vectors(vectors, req.encoding_format)  # render with `json_bytes`
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)
            ],
            "model": self.embedding_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # -- rerank ---------------------------------------------------------------------
    def rerank(self, body: Any) -> dict[str, Any]:
        """`POST /v1/rerank`: `Engine.rank` over the documents, in Cohere's shape
        (blocking: run it off the event loop)."""
        req = cast(RerankRequest, parse(RerankRequest, body))
        if req.model is not None and req.model != self.ranker_model:
            served = self.ranker_model
            raise NotFound(
                f"the model {req.model!r} is not served here; "
                + (
                    f"the ranker is {served!r} (GET /v1/models lists it)"
                    if served
                    else "no ranker is registered"
                )
            )
        ranked = self.engine.rank(
            RankRequest(
                query=req.query,
                candidates=[Candidate(id=str(i), text=t) for i, t in enumerate(req.texts)],
                top_n=req.top_n,
            )
        )
        results = []
        for r in ranked["ranking"]:
            i = int(r["id"])
            item: dict[str, Any] = {"index": i, "relevance_score": r["score"]}
            if req.return_documents:
                doc = req.documents[i]
                item["document"] = {"text": doc} if isinstance(doc, str) else doc.model_dump()
            results.append(item)
        return {"id": str(uuid.uuid4()), "model": ranked["model"], "results": results}
