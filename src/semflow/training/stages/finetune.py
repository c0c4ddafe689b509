"""Stage `finetune`: fine-tune the embedder on the training split."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semflow.config import Settings, get_settings
from semflow.training.common import Paths, read_split, write_json
from semflow.training.params import FinetuneParams, PipelineParams

if TYPE_CHECKING:
    from semflow.models.finetune import FinetuneResult


def finetune(
    paths: Paths, params: PipelineParams, settings: Settings | None = None
) -> dict[str, Any]:
    """Fine-tune the embedder on same-label pairs (or record the base model when disabled).

    The model's version (a hash of its weights) is left to its readers: importing
    `semflow.embedding` here would make every edit of it rerun the fine-tune.
    """
    s = settings or get_settings()
    out = paths.embedder
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    p = params.finetune
    if not p.enabled:
        info = {"finetuned": False, "base_model": s.embedder_name}
        write_json(out / "embedder.json", info)
        return info
    train = read_split(paths, "train")
    res = finetune_as(
        p,
        s.base_embedder_dir,
        train["text"].tolist(),
        train["label"].tolist(),
        out / "model",
        seed=params.base.seed,
    )
    info = {
        "finetuned": True,
        "steps": res.steps,
        "loss": p.loss,
        "examples": res.examples,
        "seconds": round(res.seconds, 1),
        "final_loss": res.final_loss,
        "threads": res.threads,  # the weights depend on it (semflow.models.finetune)
    }
    write_json(out / "embedder.json", info)
    write_json(paths.metrics / "finetune.json", info)
    return info


def finetune_as(
    p: FinetuneParams,
    base_model_dir: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    output_dir: Path,
    *,
    seed: int,
    epochs: int | None = None,
) -> FinetuneResult:
    """The fine-tune that params.yaml's `finetune` section describes (`epochs` overrides it)."""
    from semflow.models.finetune import finetune as run_finetune

    return run_finetune(
        base_model_dir,
        texts,
        labels,
        output_dir,
        loss=p.loss,
        epochs=epochs or p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        warmup_ratio=p.warmup_ratio,
        max_pairs=p.max_pairs,
        max_seq_length=p.max_seq_length,
        scale=p.scale,
        margin=p.margin,
        freeze_layers=p.freeze_layers,
        seed=seed,
    )
