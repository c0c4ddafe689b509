"""ONNX Runtime backends of the Embedder: `onnx` (fp32) and `onnx-int8` (dynamic int8).

The sentence-transformers model's transformer is exported once with torch's ONNX exporter
(sentence-transformers' own ONNX backend needs optimum, which the pinned transformers 5.x
rules out) and, for `onnx-int8`, quantised with onnxruntime's dynamic quantization. The
files live in `$SEMFLOW_HOME/onnx/<weights' embedder version>/<backend>/`: built once,
renamed into place whole (a reader never sees half an export), reused by every later
Embedder. New weights are a new version and so a new directory. A model directory may carry
its own exports in `onnx/<backend>/` (a registered bundle ships them, `ship_exports`): those
are used as they are, nothing is built where the Bento runs.

At run time only onnxruntime and the model's fast tokenizer are needed: texts are tokenised
with the sentence-transformers model's max_seq_length and truncation, the token embeddings
pooled as its Pooling module says (modules.json, `1_Pooling/config.json`) and normalised.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_BACKENDS = ("onnx", "onnx-int8")
# The legacy (TorchScript) exporter: the dynamo one needs onnxscript, which is not installed.
OPSET = 17
# Bump when the export or quantisation below changes: a cached export of another recipe is
# rebuilt rather than reused.
RECIPE = 1
# Per-channel weight scales: per-tensor int8 loses too much (cosine to fp32 0.97 mean, 0.92
# min on Banking77; per-channel 0.994 / 0.984). Activation x activation MatMuls (attention
# scores) stay fp32 for the same reason.
QUANT_OPTIONS: dict[str, Any] = {"per_channel": True, "extra_options": {"MatMulConstBOnly": True}}
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
# Where a model directory carries its own exports (a bundle's embedder/onnx/<backend>/).
SHIPPED_DIR = "onnx"
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
# Legacy boolean keys of a Pooling config, in sentence-transformers' order of concatenation.
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def export_dir(home: Path, weights_version: str, backend: str) -> Path:
    """Where the `backend` export of the weights `weights_version` (`name@hash`) lives."""
    return home / "onnx" / weights_version.replace("/", "_") / backend


# Padded tokens per session call. Calls of many texts are several times slower per text, not
# faster (MiniLM int8, 64 Banking77 texts a call, 1 thread on 2 loaded cores: 25 texts/s at
# 64 texts a call, 124 at 8, 147 at 256 tokens, 65 at 1024 tokens; the vectors are as close
# to torch's either way, min cosine 0.986-0.988): the activations of a small call stay in
# cache, and a call of similar lengths pads little.
BATCH_TOKENS = 256


def default_threads() -> int:
    """intra-op threads of a session: OMP_NUM_THREADS when set (as torch reads it), else the
    cores this process may use. Measured on 2 cores, int8, batch 32: 2 threads 610 texts/s, 1
    thread 375; with a neighbour busy on one core both about 350-370."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def transformer_dir(model_dir: Path) -> Path:
    """The directory of a sentence-transformers model's Transformer module (its tokenizer)."""
    modules = json.loads((model_dir / "modules.json").read_text())
    return model_dir / modules[0]["path"]


def pooling_spec(model_dir: Path) -> tuple[list[str], bool]:
    """(pooling modes, normalised?) of a sentence-transformers directory, from modules.json and
    the Pooling module's config; ValueError for a model this backend cannot run exactly."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise ValueError(
            f"the ONNX backends run Transformer -> Pooling (-> Normalize) models; "
            f"{model_dir} has {' -> '.join(kinds)}"
        )
    cfg = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    mode = cfg.get("pooling_mode") or [v for k, v in _LEGACY_POOLING.items() if cfg.get(k)]
    modes = [mode] if isinstance(mode, str) else list(mode)
    bad = [m for m in modes if m not in _POOLING_MODES]
    if not modes or bad:
        raise ValueError(f"pooling {modes} of {model_dir} is not supported by the ONNX backends")
    return modes, kinds[2:] == ["Normalize"]


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    ok = meta.get("recipe") == RECIPE and (path / MODEL_FILE).is_file()
    return meta if ok else None


def shipped_export(model_dir: Path, weights_version: str, backend: str) -> Path | None:
    """`model_dir`'s own `backend` export when it carries one of these weights and recipe."""
    path = model_dir / SHIPPED_DIR / backend
    meta = _read_meta(path)
    return path if meta is not None and meta.get("embedder_version") == weights_version else None


def ensure_export(model_dir: Path, weights_version: str, backend: str, home: Path) -> Path:
    """The directory of the `backend` export of `model_dir`: the one it ships, else the one
    under `home`, built now if missing or stale."""
    if backend not in ONNX_BACKENDS:
        raise ValueError(f"{backend!r} is not an ONNX backend ({', '.join(ONNX_BACKENDS)})")
    shipped = shipped_export(model_dir, weights_version, backend)
    if shipped is not None:
        return shipped
    final = export_dir(home, weights_version, backend)
    if _read_meta(final) is not None:
        return final
    fp32 = ensure_export(model_dir, weights_version, "onnx", home) if backend != "onnx" else None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{backend}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        log.info("building the %s export of %s in %s", backend, weights_version, final)
        meta = _export(model_dir, tmp) if fp32 is None else _quantize(fp32, tmp)
        meta.update(recipe=RECIPE, backend=backend, embedder_version=weights_version)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if final.exists():  # stale (another recipe): move it away, then swap the new one in
            old = final.with_name(f".{backend}.{uuid.uuid4().hex[:8]}.old")
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # another process renamed its (identical) export in first: use that one
            if _read_meta(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _export(model_dir: Path, out: Path) -> dict[str, Any]:
    """Export the transformer (token embeddings out) with dynamic batch and sequence axes."""
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer

    pooling, normalize = pooling_spec(model_dir)
    # Eager attention traces to plain MatMul/Softmax; SDPA's mask handling adds Where/IsNaN
    # nodes (int8, 1 thread: 490 texts/s eager, 440 SDPA). The vectors are the same.
    st = SentenceTransformer(
        str(model_dir),
        device="cpu",
        local_files_only=True,
        model_kwargs={"attn_implementation": "eager"},
    )
    module = st[0]
    hf = getattr(module, "auto_model", None) or module.model
    tokenizer = module.tokenizer
    sample = tokenizer(["a", "two words"], padding=True, return_tensors="pt")
    names = list(sample.keys())

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.hf(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "token_embeddings"]}
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns about every Python branch on a shape; checked below instead
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TokenEmbeddings().eval(),
            tuple(sample[n] for n in names),
            str(out / MODEL_FILE),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    meta = {
        "input_names": names,
        "max_seq_length": int(st.max_seq_length),
        "do_lower_case": bool(getattr(module, "do_lower_case", False)),
        "pooling": pooling,
        "normalize": normalize,
        "dimension": int(hf.config.hidden_size) * len(pooling),
        "opset": OPSET,
        "torch": torch.__version__,
    }
    (out / META_FILE).write_text(json.dumps(meta))
    _check_export(st, out, model_dir)
    return meta


def _check_export(st: Any, out: Path, model_dir: Path) -> None:
    """The export must agree with torch on texts of several lengths, alone and padded in a
    batch: a shape the tracer baked in as a constant would show here."""
    texts = ["ok", "where is my card", "I was charged twice for the same purchase yesterday"]
    want = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    runner = OnnxRunner(out, model_dir, threads=1)
    got = np.concatenate([runner.encode(texts, 8, True), runner.encode(texts[:1], 8, True)])
    cos = (got * np.concatenate([want, want[:1]])).sum(axis=1)
    if cos.min() < 0.9999:
        raise RuntimeError(f"the ONNX export disagrees with torch (cosine {cos.min():.5f})")


class _NoPreprocessHint(logging.Filter):
    """onnxruntime's quantizer suggests a shape-inference pre-pass on every call; that
    pre-pass fails on this graph (incomplete symbolic shapes) and is not needed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize(fp32: Path, out: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of the fp32 export (int8 weights, activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, hint = logging.getLogger(), _NoPreprocessHint()
    root.addFilter(hint)
    try:
        quantize_dynamic(
            str(fp32 / MODEL_FILE),
            str(out / MODEL_FILE),
            weight_type=QuantType.QInt8,
            **QUANT_OPTIONS,
        )
    finally:
        root.removeFilter(hint)
    meta = json.loads((fp32 / META_FILE).read_text())
    return {k: v for k, v in meta.items() if k not in ("recipe", "backend", "embedder_version")}


def private_tokenizer(hf_tokenizer: Any, max_length: int) -> Any:
    """A copy of a Hugging Face fast tokenizer's Rust tokenizer, set up once: truncating at
    `max_length`, never padding. Its holder's own, because the wrapper resets truncation and
    padding on every call and one shared across threads fails ("Already borrowed"); the copy
    is only read, so any number of threads may call it."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


class OnnxRunner:
    """An onnxruntime session over one export plus the tokenizer and pooling of its model."""

    def __init__(self, export: Path, model_dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.meta = json.loads((export / META_FILE).read_text())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: on 2 shared cores a spinning pool takes
        # the core the tokenizer, the HTTP threads or a neighbour need (int8, batch 32, 2
        # threads, a neighbour busy on one core: 350 texts/s without spinning, 210 with it).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(export / MODEL_FILE),
            so,
            providers=["CPUExecutionProvider"],
            # onnxruntime fuses the int8 graph's residual Add + LayerNorm into a
            # SkipLayerNormalization that is slower than the two ops (int8, 1 thread: 390
            # texts/s fused, 450 not; the vectors are the same)
            disabled_optimizers=["SkipLayerNormFusion"],
        )
        # the export holds no tokenizer: the model directory's is the one its Transformer uses
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(transformer_dir(model_dir)), local_files_only=True
        )
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        # ids only, without the offsets and Python encodings the wrapper builds per call (10k
        # Banking77 texts: 0.14 s instead of 0.39 s; the same ids)
        self._fast = private_tokenizer(self.tokenizer, self.max_seq_length)

    @property
    def dimension(self) -> int:
        return int(self.meta["dimension"])

    @property
    def max_seq_length(self) -> int:
        return int(self.meta["max_seq_length"])

    def encode(self, texts: Sequence[str], batch_size: int, normalize: bool) -> np.ndarray:
        """Embed `texts`: tokenized once, then run longest first in session calls of at most
        `batch_size` texts and `BATCH_TOKENS` padded tokens, so each call pads little and
        stays small."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        ids = self._tokenize(texts)
        lengths = np.array([len(x) for x in ids])
        order = np.argsort(-lengths, kind="stable")
        i = 0
        while i < len(texts):
            n = max(1, min(batch_size, BATCH_TOKENS // int(lengths[order[i]])))
            idx = order[i : i + n]
            out[idx] = self._run([ids[j] for j in idx])
            i += n
        if normalize or self.meta["normalize"]:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if self.meta["do_lower_case"]:
            texts = [t.lower() for t in texts]
        return [enc.ids for enc in self._fast.encode_batch_fast(list(texts))]

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        """One session call on token ids padded (right, as the tokenizer pads) to the longest."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        given = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": 0 * mask}
        feed = {n: given[n] for n in self.meta["input_names"]}
        tokens = self.session.run(None, feed)[0]
        return pool(tokens, mask, self.meta["pooling"])


def pool(tokens: np.ndarray, attention_mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """sentence-transformers' Pooling on padded token embeddings (batch, sequence, dim)."""
    mask = attention_mask[..., None].astype(np.float32)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(tokens[np.arange(len(tokens)), attention_mask.argmax(axis=1)])
        elif mode == "max":
            parts.append(np.where(mask > 0, tokens, -np.inf).max(axis=1))
        else:  # mean, mean_sqrt_len_tokens
            count = np.clip(mask.sum(axis=1), 1e-9, None)
            total = (tokens * mask).sum(axis=1)
            parts.append(total / (count if mode == "mean" else np.sqrt(count)))
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def ship_exports(model_dir: Path, weights_version: str, home: Path, dest: Path) -> list[str]:
    """Copy every ONNX export of `model_dir` (built under `home` if missing) into
    `dest/onnx/<backend>/`: a bundle's embedder then runs on any backend without exporting."""
    shipped = []
    for backend in ONNX_BACKENDS:
        src = ensure_export(model_dir, weights_version, backend, home)
        target = dest / SHIPPED_DIR / backend
        if src.resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, target)
        shipped.append(backend)
    return shipped


def load_runner(
    model_dir: Path, weights_version: str, backend: str, home: Path, threads: int | None = None
) -> OnnxRunner:
    """An OnnxRunner for `backend` on `threads` (default `default_threads()`), exporting
    `model_dir` first if it has not been."""
    export = ensure_export(model_dir, weights_version, backend, home)
    return OnnxRunner(export, model_dir, threads=threads)
