"""The serving engine: model bundle + embedder + live index, one method per endpoint.

The Bento calls these methods; they raise `ApiError`s (and `SemflowError`s) whose HTTP
status comes from `semflow.serving.errors.status_for`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from semflow.app import Services
from semflow.cache import RedisCache
from semflow.config import Settings, mask_text
from semflow.errors import ModelMismatchError
from semflow.index.base import THRESHOLD_DENSE_ONLY
from semflow.models.ranker import score_candidates, validate_weights
from semflow.serving.auth import Principal
from semflow.serving.batching import MicroBatcher
from semflow.serving.errors import NotFound, Unavailable, Unprocessable, error_answer
from semflow.serving.http import encode_vectors, json_bytes
from semflow.serving.jobs import JobRunner
from semflow.serving.relay import JobRelay
from semflow.serving.schemas import (
    ClassifyJobRequest,
    EmbedJobRequest,
    RankRequest,
    SearchRequest,
    check_texts,
    parse,
)
from semflow.serving.watcher import IndexWatcher

log = logging.getLogger(__name__)
HEALTH_TTL_S = 1.0
NO_CLASSIFIER = "no classifier registered: register and promote a model to serve classify/rank"


def load_bundle(settings: Settings, pinned: Path | None = None) -> tuple[Any, str | None]:
    """The pinned bundle baked into a built Bento, else the registry's champion (or None),
    and, if loading failed, why."""
    from semflow.registry import load_champion

    if pinned is not None:
        from semflow.models.bundle import Bundle

        bundle = Bundle.load(pinned)  # a broken baked-in model must fail the start loudly
        bundle.alias = "pinned"
        return bundle, None
    try:
        return load_champion(
            settings.tracking_uri, name=settings.registered_model, alias=settings.model_alias
        ), None
    except Exception as err:  # the registry being down must not stop embed/search
        log.warning("could not load the registered model: %s", mask_text(str(err)))
        # The health page is open: the class only, never the text (it can carry the
        # tracking URI and its credentials); the log has the whole message.
        return None, f"could not load the registered model ({type(err).__name__}); see the log"


class Engine:
    def __init__(
        self, services: Services | None = None, watch: bool = True, pinned: Path | None = None
    ) -> None:
        # Called with each model call's batch size (the Bento feeds a Prometheus histogram).
        self.batch_observers: list[Callable[[int], None]] = []
        self.services = services or Services.from_settings()
        self.settings = s = self.services.settings
        self.default_weights = validate_weights(s.rank_weights)
        self.cache = self.services.cache
        self.bundle, self.bundle_error = load_bundle(s, pinned)
        if self.bundle is not None:
            self.embedder = self.bundle.make_embedder(s, cache=self.cache)
        else:
            self.embedder = self.services.embedder(cache=self.cache)
        # Before the first encode (an ONNX session fixes its threads when it is created):
        # the workers of one machine share its cores instead of each taking all of them.
        self.embedder.use_threads(s.threads_per_worker)
        self.embedder.encode(["warm up"])  # load weights now, not on the first request
        self.dimension = self.embedder.dimension
        seq = self.embedder.max_seq_length
        self.batcher = MicroBatcher(
            self.encode,
            s.embed_max_batch_size,
            s.embed_max_latency_ms,
            s.embed_max_batch_tokens,
            # ~4 characters a token, and the model reads at most max_seq_length of them
            cost=lambda text: min(len(text) // 4 + 2, seq),
        )
        self.watcher = (
            IndexWatcher(
                self.services.store,
                self.embedder.version,
                poll_s=s.index_poll_s,
                warm_queries=s.index_warm_queries,
            )
            if watch
            else None
        )
        # Several workers: a job call reaching another worker than the job's is relayed. The
        # relay comes last, so a start that fails leaves no socket behind in the directory.
        self.relay = (
            JobRelay(s.relay_dir, self._answer_relayed, s.request_timeout_s)
            if s.workers > 1
            else None
        )
        prefix = self.relay.id_prefix if self.relay else ""
        self.jobs = JobRunner(s.job_workers, s.max_jobs, s.job_ttl_s, prefix)
        self._health: tuple[float, dict[str, Any]] | None = None

    # -- embedding ----------------------------------------------------------------
    def encode(self, texts: list[str], normalize: bool = True) -> np.ndarray:
        """The model call itself (the micro-batcher's work; cached when normalised)."""
        out = self.embedder.encode(texts, normalize=normalize)
        for observe in self.batch_observers:
            observe(len(texts))
        return out

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalised vectors through the micro-batcher, from a worker thread.

        Every endpoint and job embeds through the one batcher thread, so model calls never
        run side by side on the CPU and the shortest requests go first.
        """
        return self.batcher.submit(texts).result()

    def embed_response(self, vectors: np.ndarray, encoding_format: str = "float") -> dict[str, Any]:
        """The /embed body; render it with `serving.http.json_bytes` (the vectors stay a float32
        array: orjson writes each number as the shortest text that reads back to the same
        float32, ~20x faster than Python floats through `json`)."""
        return {
            "model": self.embedder.version,
            "dimension": self.dimension,
            "embeddings": encode_vectors(vectors, encoding_format),
        }

    def similarity(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        check_texts([t for p in pairs for t in p], self.settings, 2 * self.settings.max_texts)
        uniq = list(dict.fromkeys(t for p in pairs for t in p))
        pos = {t: i for i, t in enumerate(uniq)}
        vecs = self.embed(uniq)
        scores = [float(np.dot(vecs[pos[a]], vecs[pos[b]])) for a, b in pairs]
        return {"scores": scores, "model": self.embedder.version}

    # -- search -------------------------------------------------------------------
    def _index(self) -> Any:
        w = self.watcher
        idx = w.current if w else None
        if idx is not None:
            return idx
        if w is not None and w.last_error is not None:
            raise Unavailable(f"the index cannot be served yet: {w.last_error}")
        if w is not None and w.live is not None:
            raise ModelMismatchError(
                f"index generation {w.live} was built with {w.live_embedder_version}, and no "
                f"published generation was built with this server's embedder "
                f"{self.embedder.version}; serve the model that built the index, or rebuild it "
                "(`semflow model rollback` realigns both)"
            )
        raise Unavailable("no index generation is published yet; run `semflow sync` first")

    def check_search(self, req: SearchRequest, principal: Principal) -> tuple[Any, str]:
        """Scope, limits and index/model agreement: everything that fails before embedding.
        Returns the live index the query will run on and the mode it runs in."""
        principal.check_tenant(req.tenant)
        check_texts([req.query], self.settings)
        if req.top_k > self.settings.max_top_k:
            raise Unprocessable(f"top_k must be at most {self.settings.max_top_k}")
        idx = self._index()
        mode = idx.search_mode(req.mode, self.settings.search_mode, req.score_threshold)
        if mode != "dense" and req.score_threshold is not None:
            raise Unprocessable(THRESHOLD_DENSE_ONLY)
        return idx, mode

    def search(
        self, req: SearchRequest, principal: Principal, vector: np.ndarray | None = None
    ) -> dict[str, Any]:
        """`vector`: the query already embedded (the service batches queries across requests);
        sparse search needs none."""
        idx, mode = self.check_search(req, principal)
        if vector is None and mode != "sparse":
            vector = self.embed([req.query])[0]
        hits = idx.search(
            vector,
            req.tenant,
            req.top_k,
            req.filters or None,
            req.score_threshold,
            mode=mode,
            text=req.query,
        )
        return {
            "results": [
                {
                    "id": h.id,
                    "score": h.score,
                    "title": h.payload.get("title"),
                    "text": h.payload.get("text"),
                    "payload": h.payload,
                }
                for h in hits
            ],
            "generation": idx.generation,
            "model": self.embedder.version,
            "mode": mode,
        }

    # -- classify / rank ----------------------------------------------------------
    def _bundle(self) -> Any:
        if self.bundle is None or self.bundle.classifier is None:
            raise Unavailable(NO_CLASSIFIER)
        return self.bundle

    def classify(
        self,
        texts: list[str],
        principal: Principal,
        top_k: int = 1,
        tenant: str = "",
        max_count: int | None = None,
    ) -> dict[str, Any]:
        """Labels of `texts`; the prediction log records the tenant the key acts for."""
        tenant = principal.tenant_for(tenant)
        bundle = self._bundle()
        check_texts(texts, self.settings, max_count)
        preds = bundle.classify(self.embed(texts), top_k=min(top_k, self.settings.max_top_k))
        self._log_predictions(texts, preds, tenant)
        return {"predictions": preds, "model": self.model_ref}

    def _log_predictions(self, texts: list[str], preds: list[dict[str, Any]], tenant: str) -> None:
        from semflow.predictions import Prediction, append

        now = datetime.now(UTC).isoformat()  # the time a prediction was served, by definition
        rid = uuid.uuid4().hex
        try:
            append(
                self.settings.home,
                [
                    Prediction(t, p["label"], p["score"], self.model_ref, now, tenant, rid)
                    for t, p in zip(texts, preds, strict=True)
                ],
            )
        except OSError as err:  # a full disk must not fail the answer
            log.error("could not write the prediction log: %s", err)

    def rank(self, req: RankRequest) -> dict[str, Any]:
        bundle = self._bundle()
        weights = bundle.ranker_weights or self.default_weights
        texts = [c.text for c in req.candidates]
        check_texts([req.query, *texts], self.settings, self.settings.max_texts + 1)
        vecs = self.embed([req.query, *texts])
        scored = score_candidates(
            vecs[0], vecs[1:], req.query, texts, [c.features for c in req.candidates], weights
        )
        order = sorted(range(len(scored)), key=lambda i: -scored[i][0])
        top = order[: req.top_n] if req.top_n else order
        return {
            "ranking": [
                {"id": req.candidates[i].id, "score": scored[i][0], "components": scored[i][1]}
                for i in top
            ],
            "model": self.model_ref,
        }

    # -- long jobs ----------------------------------------------------------------
    def submit_job(self, kind: str, body: Any, principal: Principal) -> dict[str, Any]:
        """Queue an `embed_job` or `classify_job` owned by the caller's key."""
        if kind == "embed_job":
            ereq = parse(EmbedJobRequest, body)
            check_texts(ereq.texts, self.settings, self.settings.max_job_texts)
            # float32 vectors until asked for: 4 bytes a number instead of a Python float
            work = lambda: self.embed(ereq.texts)  # noqa: E731
        else:
            creq = parse(ClassifyJobRequest, body)
            tenant = principal.tenant_for(creq.tenant)
            limit = self.settings.max_job_texts
            work = lambda: self.classify(creq.texts, principal, creq.top_k, tenant, limit)  # noqa: E731
        return self.jobs.submit(kind, principal.owner, work).describe()

    def job(self, kind: str, action: str, task_id: str, principal: Principal) -> Any:
        """`status`, `get` (the result) or `cancel` of one of the caller's jobs; a job of
        another worker answers through the relay (its JSON body, as bytes)."""
        if self.relay is not None and not self.relay.owns(task_id):
            return self.relay.ask(kind, action, task_id, principal.owner)
        return self._own_job(kind, action, task_id, principal.owner)

    def _own_job(self, kind: str, action: str, task_id: str, owner: str) -> Any:
        if action == "get":
            out = self.jobs.result(task_id, kind, owner)
            return self.embed_response(out) if kind == "embed_job" else out
        if action == "cancel":
            return self.jobs.cancel(task_id, kind, owner).describe()
        if action != "status":
            raise NotFound(f"no job action {action!r}")
        return self.jobs.get(task_id, kind, owner).describe()

    def _answer_relayed(
        self, kind: str, action: str, task_id: str, owner: str
    ) -> tuple[int, bytes]:
        """Another worker's call for one of this worker's jobs: (status, JSON body)."""
        try:
            return 200, json_bytes(self._own_job(kind, action, task_id, owner))
        except Exception as err:
            status, body = error_answer(err)
            return status, json_bytes(body)

    # -- metadata -----------------------------------------------------------------
    @property
    def model_ref(self) -> str:
        b = self.bundle
        if b is None:
            return self.embedder.version
        return f"{b.registered_model}/{b.registry_version}"

    def labels(self) -> dict[str, Any]:
        b = self._bundle()
        return {
            "labels": list(b.labels),
            "threshold": b.threshold,
            # where the threshold operates, as evaluated (semflow.training.stages.register)
            "operating_point": dict(b.operating_point),
            "model": self.model_ref,
        }

    def model_info(self) -> dict[str, Any]:
        b = self.bundle
        idx = self.watcher.current if self.watcher else None
        return {
            "name": b.registered_model if b else None,
            "version": b.registry_version if b else None,
            "alias": b.alias if b else None,
            "embedder": self.embedder.version,
            "dimension": self.dimension,
            "device": self.settings.device,
            "index_generation": idx.generation if idx else None,
            "index_embedder_version": idx.embedder_version if idx else None,
            "index_live_generation": self.watcher.live if self.watcher else None,
            "index_behind_live": self.watcher.behind if self.watcher else False,
            "points": self.watcher.points if (self.watcher and idx) else 0,
            "index_warm_searches": self.watcher.warmed if (self.watcher and idx) else 0,
            "tags": dict(b.tags) if b else {},
            "lineage": dict(b.lineage) if b else {},
        }

    def _index_health(self) -> dict[str, Any]:
        w = self.watcher
        idx = w.current if w else None
        if w is not None and w.last_error is not None:
            return {
                "status": "failing",
                "generation": idx.generation if idx else None,
                "live": w.live,
                "detail": w.last_error,
            }
        if w is None or w.live is None:
            return {"status": "missing", "detail": "no generation published"}
        if idx is None:
            return {"status": "mismatch", "live": w.live}
        if w.behind:
            return {
                "status": "behind",
                "generation": idx.generation,
                "live": w.live,
                "detail": f"the live generation was built with {w.live_embedder_version}",
            }
        return {"status": "ok", "generation": idx.generation}

    def health(self) -> dict[str, Any]:
        """Per-dependency status; computed at most once a second (the page is open)."""
        now = time.monotonic()
        cached = self._health
        if cached is not None and now - cached[0] < HEALTH_TTL_S:
            return cached[1]
        out = self._check_health()
        self._health = (now, out)
        return out

    def _check_health(self) -> dict[str, Any]:
        deps: dict[str, dict[str, Any]] = {"embedder": {"status": "ok"}}
        if self.bundle is None:
            deps["classifier"] = {"status": "missing", "detail": self.bundle_error or NO_CLASSIFIER}
        else:
            deps["classifier"] = {"status": "ok", "version": self.bundle.registry_version}
        deps["index"] = self._index_health()
        deps["cache"] = (
            self.cache.status()
            if isinstance(self.cache, RedisCache)
            else {"status": "ok", "kind": "lru"}
        )
        deps["batcher"] = (
            {"status": "ok"}
            if self.batcher.alive
            else {"status": "stopped", "restarts": self.batcher.restarts}
        )
        ok = all(d["status"] == "ok" for d in deps.values())
        status = "ready" if ok else "degraded" if self.batcher.alive else "unavailable"
        return {"status": status, "dependencies": deps}

    def close(self) -> None:
        self.batcher.close()
        self.jobs.close()
        if self.relay is not None:
            self.relay.close()
        if self.watcher is not None:
            self.watcher.close()
