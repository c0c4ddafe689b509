"""Contrastive fine-tuning of the sentence embedder on same-label pairs (CPU-feasible).

Multiple-negatives ranking loss (symmetric InfoNCE) with in-batch negatives; each batch
holds at most one pair per label so that no negative shares the anchor's label.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from semflow.errors import SettingsError

log = logging.getLogger("semflow.finetune")


@dataclass
class FinetuneResult:
    output_dir: Path
    steps: int
    pairs: int
    seconds: float
    final_loss: float


def make_pairs(
    texts: Sequence[str], labels: Sequence[str], max_pairs: int, seed: int
) -> list[tuple[str, str, str]]:
    """(anchor, positive, label) with a different text of the same label, seeded."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for t, lab in zip(texts, labels, strict=True):
        by_label[lab].append(t)
    pairs = []
    for t, lab in zip(texts, labels, strict=True):
        pool = by_label[lab]
        if len(pool) < 2:
            continue
        p = t
        while p == t and len(set(pool)) > 1:
            p = rng.choice(pool)
        if p != t:
            pairs.append((t, p, lab))
    rng.shuffle(pairs)
    return pairs[:max_pairs]


def label_distinct_batches(
    pairs: list[tuple[str, str, str]], batch_size: int
) -> list[list[tuple[str, str, str]]]:
    batches: list[list[tuple[str, str, str]]] = []
    open_batches: list[tuple[set[str], list[tuple[str, str, str]]]] = []
    for pair in pairs:
        for seen, items in open_batches:
            if pair[2] not in seen:
                seen.add(pair[2])
                items.append(pair)
                if len(items) == batch_size:
                    batches.append(items)
                    open_batches.remove((seen, items))
                break
        else:
            open_batches.append(({pair[2]}, [pair]))
    batches.extend(items for _, items in open_batches if len(items) >= 2)
    return batches


def length_bucketed_batches(
    pairs: list[tuple[str, str, str]], batch_size: int, rng: random.Random
) -> list[list[tuple[str, str, str]]]:
    """Label-distinct batches of similar text length (less padding: most queries are short),
    in shuffled order."""
    by_len = sorted(pairs, key=lambda p: len(p[0]) + len(p[1]))
    chunk = batch_size * 32  # big enough that batches stay full and label-distinct
    batches = []
    for i in range(0, len(by_len), chunk):
        batches.extend(label_distinct_batches(by_len[i : i + chunk], batch_size))
    rng.shuffle(batches)
    return batches


def _freeze(model: object, n_layers: int) -> list[object]:
    """Freeze the word embeddings and the first `n_layers` encoder layers (CPU time)."""
    if n_layers <= 0:
        return []
    frozen = []
    for name, p in model.named_parameters():  # type: ignore[attr-defined]
        lowered = name.lower()
        if "embeddings" in lowered or any(f"layer.{i}." in lowered for i in range(n_layers)):
            p.requires_grad_(False)
            frozen.append(p)
    return frozen


def finetune(
    base_model_dir: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    output_dir: Path,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 3e-5,
    warmup_ratio: float = 0.1,
    max_pairs: int = 20000,
    max_seq_length: int = 64,
    scale: float = 20.0,
    freeze_layers: int = 0,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune the model in `base_model_dir` and save it to `output_dir`."""
    import torch
    from sentence_transformers import SentenceTransformer

    if epochs < 1 or batch_size < 2:
        raise SettingsError("finetune.epochs must be >= 1 and finetune.batch_size >= 2")
    t0 = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    model = SentenceTransformer(str(base_model_dir), device="cpu", local_files_only=True)
    saved_len = model.max_seq_length
    model.max_seq_length = max_seq_length  # training only; the saved model keeps its own
    frozen = _freeze(model, freeze_layers)
    pairs = make_pairs(texts, labels, max_pairs, seed)
    if not pairs:
        raise SettingsError("fine-tuning needs at least one label with two or more texts")
    rng = random.Random(seed)
    plan = []
    for _ in range(epochs):
        rng.shuffle(pairs)
        plan.extend(length_bucketed_batches(pairs, batch_size, rng))
    total = len(plan)
    warmup = max(1, int(total * warmup_ratio))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    model.train()
    loss_val = float("nan")

    def embed(batch_texts: list[str]) -> torch.Tensor:
        feats = model.tokenize(batch_texts)
        feats = {k: (v.to(model.device) if hasattr(v, "to") else v) for k, v in feats.items()}
        out = model(feats)["sentence_embedding"]
        return torch.nn.functional.normalize(out, dim=-1)

    for step, batch in enumerate(plan):
        a = embed([p[0] for p in batch])
        b = embed([p[1] for p in batch])
        sims = a @ b.T * scale
        target = torch.arange(len(batch))
        loss = (
            torch.nn.functional.cross_entropy(sims, target)
            + torch.nn.functional.cross_entropy(sims.T, target)
        ) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
        if step % 50 == 0:
            log.info("finetune step %d/%d loss %.4f", step, total, loss_val)
    model.eval()
    model.max_seq_length = saved_len
    for p in frozen:
        p.requires_grad_(True)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    return FinetuneResult(output_dir, total, len(pairs), time.perf_counter() - t0, loss_val)
