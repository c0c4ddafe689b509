"""Fine-tuning of the sentence embedder on labelled texts (CPU-feasible).

Two losses:
- `mnrl`: multiple-negatives ranking loss (symmetric InfoNCE) on same-label pairs with
  in-batch negatives; each batch holds at most one pair per label so that no negative
  shares the anchor's label.
- `proxy`: normalised-softmax (proxy) loss: one learned unit vector per label, initialised
  at the label's mean base embedding; each text is pulled to its label's proxy and pushed
  from every other label's, not only from the labels that happen to share its batch, with
  an optional additive cosine margin (CosFace). One forward pass per text instead of two
  per pair, so an epoch costs half as much.

Same inputs, same weights (on one machine): every RNG is seeded from `seed`, batches come
from seeded `random.Random`s, and the block runs with deterministic kernels and a fixed
intra-op thread count (`training_threads`). The thread count matters: the backward passes
of LayerNorm and attention sum per-thread partial results, so 1 and 2 threads give weights
that differ in the last bits (and so another embedder version). The forward pass and the
CPU's instruction set (AVX2 vs AVX-512 kernels) are beyond this: another CPU can still give
other bits.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from semflow.errors import SettingsError
from semflow.progress import progress

log = logging.getLogger("semflow.finetune")


@dataclass
class FinetuneResult:
    output_dir: Path
    steps: int
    examples: int  # pairs (mnrl) or texts (proxy) per epoch
    seconds: float
    final_loss: float
    threads: int  # intra-op threads it trained with: the weights depend on it


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


def length_bucketed_chunks(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Batches of indices of items of similar length, in shuffled order."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) >= 2]


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


def training_threads() -> int:
    """Physical cores this process may run on: the intra-op thread count of a fine-tune.

    torch's own default is the same number, but OMP_NUM_THREADS, MKL_NUM_THREADS or an
    earlier `torch.set_num_threads` in the process change it, and with it the weights;
    this reads only the machine (and the process's CPU affinity).
    """
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux: no affinity, no sysfs topology
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            # Hyper-threads of one core share (package, core id): count the core once.
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            cores.add((str(cpu), ""))
    return max(1, len(cores))


@contextmanager
def reproducible(seed: int, threads: int) -> Iterator[None]:
    """Seeded RNGs, `threads` intra-op threads and deterministic kernels inside the block.

    The process's RNG states, thread count and determinism flag are restored after it
    (the stage runs in Airflow tasks and tests, next to other torch work).
    """
    import torch

    py_state = random.getstate()
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        torch.manual_seed(seed)  # dropout draws from the default generator
        torch.set_num_threads(threads)
        # A kernel without a deterministic CPU implementation fails here instead of
        # silently changing the weights from run to run.
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
            torch.set_num_threads(old_threads)
            random.setstate(py_state)


Loss = Literal["mnrl", "proxy"]  # also the type of `finetune.loss` in params
LOSSES: tuple[str, ...] = get_args(Loss)


def finetune(
    base_model_dir: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    output_dir: Path,
    *,
    loss: str = "mnrl",
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 3e-5,
    warmup_ratio: float = 0.1,
    max_pairs: int = 20000,
    max_seq_length: int = 64,
    scale: float = 20.0,
    margin: float = 0.0,
    freeze_layers: int = 0,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune the model in `base_model_dir` and save it to `output_dir`.

    Bit-identical weights for identical arguments on one machine (see the module's doc).
    """
    if epochs < 1 or batch_size < 2:
        raise SettingsError("finetune.epochs must be >= 1 and finetune.batch_size >= 2")
    if loss not in LOSSES:
        raise SettingsError(f"finetune.loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    t0 = time.perf_counter()
    threads = training_threads()
    with reproducible(seed, threads):
        steps, n_examples, loss_val = _train(
            base_model_dir,
            texts,
            labels,
            Path(output_dir),
            loss=loss,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            warmup_ratio=warmup_ratio,
            max_pairs=max_pairs,
            max_seq_length=max_seq_length,
            scale=scale,
            margin=margin,
            freeze_layers=freeze_layers,
            seed=seed,
        )
    seconds = time.perf_counter() - t0
    log.info("finetune: %d steps on %d threads in %.0f s", steps, threads, seconds)
    return FinetuneResult(Path(output_dir), steps, n_examples, seconds, loss_val, threads)


def _train(
    base_model_dir: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    output_dir: Path,
    *,
    loss: str,
    epochs: int,
    batch_size: int,
    lr: float,
    warmup_ratio: float,
    max_pairs: int,
    max_seq_length: int,
    scale: float,
    margin: float,
    freeze_layers: int,
    seed: int,
) -> tuple[int, int, float]:
    """The training loop of `finetune`, saving to `output_dir`: (steps, examples, final loss)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(base_model_dir), device="cpu", local_files_only=True)
    saved_len = model.max_seq_length
    model.max_seq_length = max_seq_length  # training only; the saved model keeps its own
    frozen = _freeze(model, freeze_layers)
    rng = random.Random(seed)
    norm = torch.nn.functional.normalize

    def embed(batch_texts: list[str]) -> torch.Tensor:
        feats = model.tokenize(batch_texts)
        feats = {k: (v.to(model.device) if hasattr(v, "to") else v) for k, v in feats.items()}
        return norm(model(feats)["sentence_embedding"], dim=-1)

    extra: list[torch.nn.Parameter] = []
    if loss == "mnrl":
        pairs = make_pairs(texts, labels, max_pairs, seed)
        if not pairs:
            raise SettingsError("fine-tuning needs at least one label with two or more texts")
        plan: list[Any] = []
        for _ in range(epochs):
            rng.shuffle(pairs)
            plan.extend(length_bucketed_batches(pairs, batch_size, rng))
        n_examples = len(pairs)

        def batch_loss(batch: list[tuple[str, str, str]]) -> torch.Tensor:
            sims = embed([p[0] for p in batch]) @ embed([p[1] for p in batch]).T * scale
            target = torch.arange(len(batch))
            ce = torch.nn.functional.cross_entropy
            return (ce(sims, target) + ce(sims.T, target)) / 2

    else:
        names = sorted(set(labels))
        if len(names) < 2:
            raise SettingsError("fine-tuning with finetune.loss=proxy needs two or more labels")
        index = {lab: i for i, lab in enumerate(names)}
        y = torch.tensor([index[lab] for lab in labels])
        proxies = torch.nn.Parameter(_label_means(model, list(texts), y, len(names)))
        extra = [proxies]
        lengths = [len(t) for t in texts]
        plan = [b for _ in range(epochs) for b in length_bucketed_chunks(lengths, batch_size, rng)]
        n_examples = len(texts)

        def batch_loss(batch: list[int]) -> torch.Tensor:
            target = y[batch]
            cos = embed([texts[i] for i in batch]) @ norm(proxies, dim=-1).T
            # Additive cosine margin (CosFace): the own label must win by `margin`.
            cos = cos - margin * torch.nn.functional.one_hot(target, cos.shape[1])
            return torch.nn.functional.cross_entropy(cos * scale, target)

    total = len(plan)
    warmup = max(1, int(total * warmup_ratio))
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": trainable}]
    if extra:
        # The proxies start at the label means but must move faster than the encoder.
        groups.append({"params": extra, "lr": lr * 100, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    model.train()
    loss_val = float("nan")
    with progress("fine-tune", total, "steps") as bar:
        for step, batch in enumerate(plan):
            value = batch_loss(batch)
            opt.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            loss_val = float(value.detach())
            bar.update()
            if step % 50 == 0:
                log.info("finetune step %d/%d loss %.4f", step, total, loss_val)
    model.eval()
    model.max_seq_length = saved_len
    for p in frozen:
        p.requires_grad_(True)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    return total, n_examples, loss_val


def _label_means(model: object, texts: list[str], y: object, n_labels: int) -> object:
    """Unit mean embedding per label under the starting model (the proxies' initial value)."""
    import torch

    with torch.no_grad():
        emb = torch.as_tensor(
            model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)  # type: ignore[attr-defined]
        )
        sums = torch.zeros(n_labels, emb.shape[1]).index_add_(0, y, emb)  # type: ignore[arg-type]
    return torch.nn.functional.normalize(sums, dim=-1)
