"""Stage `embed`: embed every split once with the pipeline's embedder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from semflow.config import Settings, get_settings
from semflow.training.common import Paths, read_split
from semflow.training.params import PipelineParams


def embedder_for(paths: Paths, settings: Settings | None = None, backend: str | None = None) -> Any:
    """The pipeline's embedder: the fine-tuned model when there is one, else the base; run
    by `backend` exactly when given (the int8 guard measures that one, never a fallback)."""
    from semflow.embedding import FINETUNED_SUFFIX, resolve_embedder

    s = settings or get_settings()
    meta_path = paths.embedder / "embedder.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"finetuned": False}
    if meta.get("finetuned"):
        tuned = paths.embedder / "model"
        return resolve_embedder(
            s,
            model_dir=tuned,
            name=s.embedder_name + FINETUNED_SUFFIX,
            batch_size=128,
            backend=backend,
        )
    return resolve_embedder(s, batch_size=128, backend=backend)


def base_features_path(paths: Paths) -> Path:
    """The base (not fine-tuned) embedder's vectors of every split: the open-set evaluation's
    (the fine-tuned embedder saw the labels it holds out)."""
    return paths.features.with_name("base_embeddings.npz")


def _embed_splits(emb: Any, paths: Paths) -> dict[str, np.ndarray]:
    return {
        name: emb.encode_all(read_split(paths, name)["text"].tolist(), f"embed {name}")
        for name in ("train", "val", "test")
    }


def embed(paths: Paths, params: PipelineParams, settings: Settings | None = None) -> dict[str, Any]:
    """Embed train/val/test once; later stages read the arrays."""
    from semflow.embedding import resolve_embedder

    emb = embedder_for(paths, settings)
    arrays = _embed_splits(emb, paths)
    paths.features.parent.mkdir(parents=True, exist_ok=True)
    np.savez(paths.features, **arrays)
    base = resolve_embedder(settings or get_settings(), batch_size=128)
    np.savez(
        base_features_path(paths),
        **(arrays if base.version == emb.version else _embed_splits(base, paths)),
    )
    return {"version": emb.version, **{k: int(v.shape[0]) for k, v in arrays.items()}}
