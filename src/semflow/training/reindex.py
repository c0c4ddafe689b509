"""Rebuild the index with the champion's embedder, checked on golden queries (Airflow), and
roll the champion back with the index realigned to its embedder (`semflow model rollback`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semflow.config import Settings, get_settings
from semflow.documents import PAYLOAD_FIELDS
from semflow.errors import SemflowError
from semflow.training.common import Paths, read_split
from semflow.training.params import PipelineParams, load_pipeline_params

log = logging.getLogger("semflow.training.reindex")


class ReindexRejected(SemflowError):
    """The rebuilt generation scored worse on the golden queries; the old one stays live."""


class RollbackError(SemflowError):
    """A rollback could not realign the index; the sentence says where the alias stands."""


def golden_ndcg(
    index: Any, embedder: Any, queries: pd.DataFrame, tenant: str, k: int = 10
) -> float:
    """Mean nDCG@k of labelled queries; relevant = a hit carrying the query's label."""
    from semflow.models.metrics import ndcg_at_k

    vecs = embedder.encode(queries["text"].tolist())
    vals = []
    for vec, label in zip(vecs, queries["label"], strict=True):
        hits = index.search(vec, tenant, top_k=k)
        vals.append(
            ndcg_at_k(
                [float(label in (h.payload.get("labels") or [])) for h in hits], k, n_relevant=k
            )
        )
    return float(np.mean(vals)) if vals else 0.0


def reindex_if_changed(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    golden: pd.DataFrame | None = None,
    max_golden: int = 200,
    *,
    bundle: Any = None,
    gate: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Rebuild the index with the champion's embedder (or `bundle`'s) when it differs from the
    live one.

    The new generation is filled from the live payloads and scored on golden queries. With
    `gate` it is published only if its nDCG@10 is not below the old generation's; without
    (an operator's rollback) it is published anyway, the scores logged, and missing golden
    queries only skip the scoring.
    """
    from semflow import registry
    from semflow.app import Services

    s = settings or get_settings()
    name = name or s.registered_model
    champ = bundle if bundle is not None else registry.load_champion(s.tracking_uri, name)
    if champ is None:
        return {"reindexed": False, "reason": "no champion registered"}
    store = Services.from_settings(s).store
    live_version = store.live_embedder_version()
    if live_version is None:
        return {"reindexed": False, "reason": "no live index generation"}
    # as served: the bundle's weights on this host's backend (fp32 ONNX if int8 was refused)
    new_emb = champ.make_embedder(s, batch_size=128)
    if live_version == new_emb.version:
        return {"reindexed": False, "reason": "the index already uses the model's embedder"}
    if golden is None:
        try:
            golden = read_split(paths, "test")
        except SemflowError as err:
            if gate:
                raise
            log.warning("rebuilding the index without golden-query scores: %s", err)
    if golden is not None:
        golden = golden.head(max_golden)
    from semflow.embedding import resolve_embedder

    base = resolve_embedder(s)
    old_emb = base if base.version == live_version else None
    if old_emb is None and golden is not None:
        # The live generation was built by an earlier fine-tuned bundle: find it to score it.
        prev = registry.version_with_embedder(s.tracking_uri, live_version, name)
        if prev is not None:
            old_emb = registry.load_version(s.tracking_uri, name, prev).make_embedder(
                s, batch_size=128
            )
    with store.open_live() as live:
        old_gen = live.generation
        old_score = (
            golden_ndcg(live, old_emb, golden, params.base.tenant)
            if old_emb is not None and golden is not None
            else None
        )
    if champ.embedder_dir is not None:
        from semflow.embedding import install_embedder

        # Installed before the switch so the next sync embeds with the same model.
        install_embedder(s, Path(champ.embedder_dir), new_emb.version)
    scores: dict[str, float] = {}

    def check(w: Any) -> None:
        if golden is None:
            return
        scores["new"] = golden_ndcg(w, new_emb, golden, params.base.tenant)
        log.info(
            "golden-query nDCG@10: rebuilt index %.4f, live generation %s %s",
            scores["new"],
            old_gen,
            "unscored" if old_score is None else f"{old_score:.4f}",
        )
        if old_score is not None and scores["new"] < old_score:
            worse = (
                f"the rebuilt index scores nDCG@10 {scores['new']:.4f} on the golden queries, "
                f"below the live generation's {old_score:.4f}"
            )
            if gate:
                raise ReindexRejected(f"{worse}; generation {old_gen} stays live")
            log.warning("%s; published anyway: this rebuild is not gated", worse)

    points = rebuild_generation(store, new_emb, check)
    return {
        "reindexed": True,
        "old_generation": old_gen,
        "generation": store.live_generation(),
        "embedder_version": new_emb.version,
        "golden_ndcg": scores.get("new"),
        "old_golden_ndcg": old_score,
        "gated": gate,
        "points": points,
    }


def rollback_champion(
    version: str,
    *,
    reindex: bool = True,
    settings: Settings | None = None,
    params: PipelineParams | None = None,
) -> dict[str, Any]:
    """Make `version` the champion; unless `reindex` is off, first rebuild the index with its
    embedder when the live generation was built with another one, and install that embedder
    so later syncs embed with it.

    A rollback is an operator's decision, so the golden queries do not gate the rebuild. The
    rebuild comes before the alias moves and publishes atomically: if it fails, nothing has
    changed, and the RollbackError says so.
    """
    from semflow import registry
    from semflow.app import Services

    s = settings or get_settings()
    name = s.registered_model
    if not reindex:
        out = registry.rollback(s.tracking_uri, version, name)
        return {**out, "reindex": {"reindexed": False, "reason": "skipped on request"}}
    registry.check_ready(s.tracking_uri, version, name)
    bundle = registry.load_version(s.tracking_uri, name, version)
    versions = registry.list_versions(s.tracking_uri, name)
    champion = next((v["version"] for v in versions if registry.CHAMPION in v["aliases"]), None)
    alias_state = f"the champion is still v{champion}" if champion else "no champion is set"
    store = Services.from_settings(s).store
    live = store.live_generation()
    index_state = (
        f"generation {live} (built with {store.live_embedder_version()}) stays live"
        if live is not None
        else "the index is unchanged"
    )
    try:
        rx = reindex_if_changed(
            Paths.for_home(s),
            params or load_pipeline_params(),
            s,
            bundle=bundle,
            gate=False,
            name=name,
        )
    except Exception as err:
        raise RollbackError(
            f"could not rebuild the index with v{version}'s embedder "
            f"{bundle.embedder_version}: {err}. The alias and the index are as they were: "
            f"{alias_state} and {index_state}. Fix the cause and run the rollback again, or "
            "pass --no-reindex to move only the alias"
        ) from err
    try:
        out = registry.rollback(s.tracking_uri, version, name)
    except Exception as err:
        if not rx["reindexed"]:
            raise
        raise RollbackError(
            f"the index was rebuilt with v{version}'s embedder {bundle.embedder_version} "
            f"(generation {rx['generation']}), but the champion alias could not be moved: "
            f"{err}. {alias_state[0].upper()}{alias_state[1:]}; run the rollback again to move "
            "it (the index is not rebuilt twice)"
        ) from err
    return {**out, "reindex": rx}


def rebuild_generation(
    store: Any, embedder: Any, check: Callable[[Any], None] | None = None
) -> int:
    """Publish a fresh generation of every live point embedded with `embedder`; returns
    its point count. `check(index)` runs before the switch and may raise to keep the old one.

    The bulk is embedded outside the writer lock, so syncs keep publishing meanwhile. Under
    the lock the live points are read again and whatever changed since (edited, new and
    deleted documents) is embedded too, so the swap never drops a sync's changes.
    """
    before = _live_payloads(store)
    vectors = dict(zip(before, _encode(embedder, before.values()), strict=True))
    with store.lock():
        now = _live_payloads(store)
        changed = {pid: p for pid, p in now.items() if before.get(pid) != p}
        vectors.update(zip(changed, _encode(embedder, changed.values()), strict=True))
        ids = list(now)
        with store.writer(embedder.version, embedder.dimension, fresh=True) as w:
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                w.upsert(
                    chunk,
                    np.stack([vectors[pid] for pid in chunk]),
                    [{**now[pid], "embedder_version": embedder.version} for pid in chunk],
                )
            if check is not None:
                check(w)
    return len(ids)


def _live_payloads(store: Any) -> dict[str, dict[str, Any]]:
    with store.open_live() as live:
        return dict(live.iter_payloads(fields=list(PAYLOAD_FIELDS)))


def _encode(embedder: Any, payloads: Iterable[dict[str, Any]]) -> np.ndarray:
    texts = [p.get("text") or "" for p in payloads]
    if not texts:
        return np.zeros((0, embedder.dimension), np.float32)
    return embedder.encode_all(texts, "re-index")


def dag_reindex(
    overrides: Mapping[str, Any] | None = None, version: str | None = None
) -> dict[str, Any]:
    """Reindex after a promotion; tag the promoted `version` with the generation it serves."""
    from semflow import registry
    from semflow.app import Services

    s = get_settings()
    out = reindex_if_changed(Paths.for_home(s), load_pipeline_params(overrides=overrides), s)
    generation = out.get("generation") or Services.from_settings(s).store.live_generation()
    if version is not None and generation is not None:
        tags = {"lineage.index_generation": str(generation)}
        registry.set_version_tags(s.tracking_uri, s.registered_model, version, tags)
    return out
