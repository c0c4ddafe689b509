"""The semflow Bento: embed, similarity, search, classify and rank over HTTP.

`/v1/embeddings`, `/v1/models` and `/v1/rerank` answer OpenAI and Cohere clients; their
shaping is `semflow.serving.compat`, their work the same engine methods, behind the same
guard, and `compat.PeerErrorShape` gives every error on them the peer's own shape.

Wiring only: every endpoint calls `semflow.serving.Engine`. A pure-ASGI guard
(`semflow.serving.http.GuardMiddleware`) checks the API key, the body size and the JSON
schema first, so bad input gets a 401/403/413/422 sentence before any model code runs.
Errors raised by the engine are mapped to their status (409 model mismatch, 503 no
classifier or no index) by `semflow.serving.errors.status_for`. Long jobs
(`/embed_job/*`, `/classify_job/*`) run on the engine's own job pool and belong to the key
that submitted them; BentoML's task store is not used, since it keeps every request's
headers (the API key) and texts on disk.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from semflow.app import Services
from semflow.config import get_settings
from semflow.serving import Engine, error_answer
from semflow.serving.auth import NOBODY, Principal
from semflow.serving.compat import CompatAPI, PeerErrorShape, error_response
from semflow.serving.http import PRINCIPAL, GuardMiddleware, json_bytes
from semflow.serving.schemas import (
    Candidate,
    ClassifyRequest,
    EmbedRequest,
    EncodeRequest,
    RankRequest,
    SearchRequest,
    SimilarityRequest,
)

_S = get_settings()


class BentoArgs(BaseModel):
    # A BentoML model-store tag (semflow-bundle:vN) baked into the Bento by
    # `bentoml build --arg model_tag=...`; empty: load `models:/semflow@champion` at start.
    model_tag: str = ""


ARGS = bentoml.use_arguments(BentoArgs)


def _error(err: Exception) -> JSONResponse:
    status, body = error_answer(err)
    return JSONResponse(body, status)


def _fail(err: Exception, ctx: bentoml.Context | None = None) -> JSONResponse:
    resp = _error(err)
    if ctx is not None:  # BentoML applies ctx's status over a returned Response
        ctx.response.status_code = resp.status_code
    return resp


def _answer(fn: Callable[[], Any], ctx: bentoml.Context | None = None) -> Any:
    """Run an endpoint body; a known error becomes `{"error": sentence}` with its status."""
    try:
        return fn()
    except Exception as err:
        return _fail(err, ctx)


def _principal(scope: Any) -> Principal:
    """The caller the guard authenticated; none (a route it did not see) reads nothing."""
    return scope.get(PRINCIPAL, NOBODY)


def _engine() -> Engine | None:
    svc = bentoml.get_current_service()
    return None if svc is None else svc.engine


STARTING = JSONResponse({"error": "the service is still starting"}, 503)


class FastJSON(JSONResponse):
    """A JSON answer written by orjson: vectors (numpy arrays) without a Python float each."""

    def render(self, content: Any) -> bytes:
        # bytes: a body already written as JSON (another worker's answer, relayed)
        return content if isinstance(content, bytes) else json_bytes(content)


async def _get(request: Request) -> JSONResponse:
    """GET /labels, /model, /health (a plain ASGI app: BentoML APIs are POST-only)."""
    engine = _engine()
    if engine is None:
        return STARTING
    fn = {"/labels": engine.labels, "/model": engine.model_info, "/health": engine.health}[
        request.url.path
    ]
    out = await run_in_threadpool(_answer, fn)
    return out if isinstance(out, JSONResponse) else JSONResponse(out)


async def _job(request: Request) -> JSONResponse:
    """/<job>/submit (POST), /<job>/status and /<job>/get (GET), /<job>/cancel (PUT)."""
    engine = _engine()
    if engine is None:
        return STARTING
    kind, action = request.url.path.strip("/").split("/")
    principal = _principal(request.scope)
    if action == "submit":
        body = await request.json()  # the guard has checked it
        fn = lambda: engine.submit_job(kind, body, principal)  # noqa: E731
    else:
        task_id = request.query_params.get("task_id", "")
        fn = lambda: engine.job(kind, action, task_id, principal)  # noqa: E731
    out = _answer(fn)
    return out if isinstance(out, JSONResponse) else FastJSON(out)


async def _v1(request: Request) -> JSONResponse:
    """GET /v1/models, POST /v1/embeddings and /v1/rerank (OpenAI/Cohere shapes)."""
    svc = bentoml.get_current_service()
    if svc is None:
        return STARTING
    compat: CompatAPI = svc.compat
    path = request.url.path
    try:
        if path == "/v1/models":
            out = compat.models()
        elif path == "/v1/embeddings":
            out = await compat.embeddings(await request.json())  # the guard has checked it
        else:
            out = await run_in_threadpool(compat.rerank, await request.json())
    except Exception as err:
        status, body = error_response(path, err)
        return JSONResponse(body, status)
    return FastJSON(out)


# Texts per model call of the engine's micro-batcher: the dashboard's batching panel (the
# engine batches itself, so BentoML's adaptive-batching metric never appears).
BATCH_SIZE = bentoml.metrics.Histogram(
    name="semflow_embed_batch_size",
    documentation="Texts per model call of the micro-batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

_JOB_METHODS = {"submit": "POST", "status": "GET", "get": "GET", "cancel": "PUT"}
_JOB_KINDS = ("embed_job", "classify_job")
info_app = Starlette(
    routes=[Route(p, _get, methods=["GET"]) for p in ("/labels", "/model", "/health")]
    + [
        Route(f"/{kind}/{action}", _job, methods=[method])
        for kind in _JOB_KINDS
        for action, method in _JOB_METHODS.items()
    ]
    + [
        Route("/v1/models", _v1, methods=["GET"]),
        Route("/v1/embeddings", _v1, methods=["POST"]),
        Route("/v1/rerank", _v1, methods=["POST"]),
    ]
)


@bentoml.service(
    name="semflow",
    # SEMFLOW_WORKERS processes; each follows the live generation (published edge
    # generations are read-only, any number of processes open them) and runs its model on
    # `threads_per_worker` cores. `threads`: the pool of the sync endpoints, which mostly
    # wait on the one micro-batcher thread, so a few suffice for either backend.
    workers=_S.workers,
    threads=4,
    traffic={"timeout": _S.request_timeout_s, "max_concurrency": _S.max_concurrency},
    labels={"project": "semflow"},
)
class Semflow:
    bundle_model = bentoml.models.BentoModel(ARGS.model_tag) if ARGS.model_tag else None

    def __init__(self) -> None:
        pinned = Path(self.bundle_model.path) if self.bundle_model is not None else None
        self.engine = Engine(Services.from_settings(_S), pinned=pinned)
        self.engine.batch_observers.append(BATCH_SIZE.observe)
        self.compat = CompatAPI(self.engine)
        # Everything loaded so far (torch, transformers, the model) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it (the
        # first one under load stalled every request in flight for ~0.6 s).
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.engine.health()["status"] in ("ready", "degraded")

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.engine.close()

    @bentoml.api(input_spec=EmbedRequest)
    async def embed(
        self, texts: list[str], normalize: bool = True, encoding_format: str = "float"
    ) -> dict[str, Any]:
        """Embed texts (adaptive micro-batching across concurrent requests)."""
        try:
            if normalize:
                vectors = await self.engine.batcher.encode(texts)
            else:  # one request's model call, off the event loop
                vectors = await run_in_threadpool(self.engine.encode, texts, False)
        except Exception as err:
            return _error(err)
        # Written here, not by BentoML's JSON (a Python float per number: ~20 ms a batch).
        return FastJSON(self.engine.embed_response(vectors, encoding_format))

    # BentoML's own adaptive batching; a latency bound of 50 ms made the dispatcher shed
    # most requests under load ("process is overloaded"), so it is generous here.
    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=2000, input_spec=EncodeRequest)
    def encode(self, texts: list[str]) -> np.ndarray:
        """Raw batched endpoint: a JSON list of texts -> a list of normalised vectors."""
        return self.engine.embed(texts)

    @bentoml.api(input_spec=SimilarityRequest)
    def similarity(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """Cosine similarity of each [a, b] pair."""
        return _answer(lambda: self.engine.similarity(pairs))

    @bentoml.api(input_spec=SearchRequest)
    async def search(
        self,
        query: str,
        tenant: str,
        top_k: int = 10,
        score_threshold: float | None = None,
        filters: dict[str, Any] | None = None,
        mode: str | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """Best documents of one tenant in the live index generation: dense, sparse or
        hybrid search."""
        req = SearchRequest(
            query=query,
            tenant=tenant,
            top_k=top_k,
            score_threshold=score_threshold,
            filters=filters or {},
            mode=mode,  # type: ignore[arg-type]  # the guard has validated it
        )
        principal = _principal(ctx.request.scope) if ctx else NOBODY
        try:
            _, resolved = self.engine.check_search(req, principal)
            # Queries of concurrent requests share one model call, as /embed does; a sparse
            # search needs no embedding.
            vector = (
                None if resolved == "sparse" else (await self.engine.batcher.encode([req.query]))[0]
            )
        except Exception as err:
            return _fail(err, ctx)
        body = lambda: self.engine.search(req, principal, vector)  # noqa: E731
        return await run_in_threadpool(_answer, body, ctx)

    @bentoml.api(input_spec=ClassifyRequest)
    def classify(
        self,
        texts: list[str],
        top_k: int = 1,
        tenant: str = "",
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """Label each text with the registered classifier ("unknown" when its OOS score is
        above the threshold)."""
        principal = _principal(ctx.request.scope) if ctx else NOBODY
        return _answer(lambda: self.engine.classify(texts, principal, top_k, tenant), ctx)

    @bentoml.api(input_spec=RankRequest)
    def rank(
        self, query: str, candidates: list[Candidate], top_n: int | None = None
    ) -> dict[str, Any]:
        """Order candidates by the registered ranker's weighted score."""
        req = RankRequest(query=query, candidates=candidates, top_n=top_n)
        return _answer(lambda: self.engine.rank(req))


# First added, outermost: the peer-shaped errors cover the guard's answers too.
Semflow.add_asgi_middleware(PeerErrorShape)
Semflow.add_asgi_middleware(GuardMiddleware)
Semflow.mount_asgi_app(info_app, path="/")
