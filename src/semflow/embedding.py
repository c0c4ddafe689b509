"""Embedder: a sentence-transformers model loaded offline, with a stable version.

An embedder version is `name@<12 hex of the weights' sha256>`, followed by `+onnx` or
`+onnx-int8` when another backend than torch runs the weights (its vectors differ, so an index
is never queried with another backend's); `format_version` and
`parse_version` are the only code that builds or splits one, `resolve_embedder` the only code
that decides which weights embed for an index generation or a bundle, and `check_embedder`
the only comparison of what was wanted against what was loaded. A bundle's int8 quality
guard verdict (semflow.models.backend_guard) is recorded beside its installed weights
(`record_guard`), so every embedder of those weights, the sync's included, falls back to fp32
ONNX as the service does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semflow.cache import text_key
from semflow.config import Settings
from semflow.errors import ModelMismatchError
from semflow.models.backend_guard import serving_backend
from semflow.onnx_backend import BACKENDS

# Nothing may reach a model hub: weights come from a local directory only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_VERSION = re.compile(r"^(?P<name>.+)@(?P<digest>[0-9a-f]{12})(?:\+(?P<backend>onnx|onnx-int8))?$")
# The name a fine-tuned copy of the configured embedder is versioned under.
FINETUNED_SUFFIX = "-semflow-ft"


def format_version(name: str, digest: str, backend: str = "torch") -> str:
    """`name@digest` (`+backend` unless torch), the one spelling of an embedder version."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown embedder backend {backend!r} ({', '.join(BACKENDS)})")
    return f"{name}@{digest[:12]}" + ("" if backend == "torch" else f"+{backend}")


def parse_version(version: str) -> tuple[str, str, str]:
    """(name, digest, backend) of `name@digest[+backend]`; ValueError on anything else."""
    m = _VERSION.match(version)
    if m is None:
        raise ValueError(
            f"{version!r} is not an embedder version (name@<12 hex>[+onnx|+onnx-int8])"
        )
    return m["name"], m["digest"], m["backend"] or "torch"


def weights_version(version: str) -> str:
    """`name@digest` of a version: what names the weights, whichever backend runs them."""
    name, digest, _ = parse_version(version)
    return format_version(name, digest)


def embedder_version(model_dir: Path, name: str, backend: str = "torch") -> str:
    """The version of the weights in `model_dir` run by `backend`: changes exactly when they
    (or the backend) change."""
    h = hashlib.sha256()
    found = False
    for wf in _WEIGHT_FILES:
        p = model_dir / wf
        if p.exists():
            found = True
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    if not found:
        raise FileNotFoundError(f"no model weights ({', '.join(_WEIGHT_FILES)}) in {model_dir}")
    return format_version(name, h.hexdigest(), backend)


def check_embedder(actual: str, expected: str, what: str) -> None:
    """Raise ModelMismatchError "<what> <expected>, but the embedder is <actual>" unless equal.

    `what` names the thing built with `expected`, e.g. "the live index was built with".
    """
    if actual != expected:
        raise ModelMismatchError(f"{what} {expected}, but the embedder is {actual}")


class Embedder:
    """Loads the model lazily; `encode` returns L2-normalised float32 rows by default.

    `backend` runs the weights: torch (sentence-transformers), or onnxruntime on an export
    kept under `<home>/onnx` (`onnx`, `onnx-int8`; see semflow.onnx_backend).
    """

    def __init__(
        self,
        model_dir: Path | str,
        name: str,
        device: str = "cpu",
        batch_size: int = 64,
        cache: Any | None = None,
        backend: str = "torch",
        home: Path | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model directory {self.model_dir} does not exist")
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.cache = cache
        self.backend = backend
        self.version = embedder_version(self.model_dir, name, backend)
        self._home = home
        self._model: Any = None
        self._onnx: Any = None
        self._lock = threading.Lock()
        self.threads: int | None = None  # compute threads; None: the backend's default

    def use_threads(self, n: int) -> None:
        """Run the model on `n` compute threads. torch's count is process-wide (a server
        worker owns its process); an ONNX session reads it when it is created, so call this
        before the first encode."""
        self.threads = n
        if self.backend == "torch":
            import torch

            torch.set_num_threads(n)

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    self._model = SentenceTransformer(
                        str(self.model_dir), device=self.device, local_files_only=True
                    )
        return self._model

    @property
    def onnx(self) -> Any:
        """The onnxruntime runner of an ONNX backend (exported on first use)."""
        if self._onnx is None:
            with self._lock:
                if self._onnx is None:
                    from semflow.onnx_backend import load_runner

                    if self._home is None:
                        from semflow.config import get_settings

                        self._home = get_settings().home
                    weights = weights_version(self.version)
                    self._onnx = load_runner(
                        self.model_dir, weights, self.backend, self._home, self.threads
                    )
        return self._onnx

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer, from what runs it (no torch weights are loaded
        for an ONNX backend)."""
        return self.model.tokenizer if self.backend == "torch" else self.onnx.tokenizer

    @property
    def dimension(self) -> int:
        if self.backend != "torch":
            return self.onnx.dimension
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    @property
    def max_seq_length(self) -> int:
        if self.backend != "torch":
            return self.onnx.max_seq_length
        return int(self.model.max_seq_length)

    def _encode_raw(self, texts: Sequence[str], normalize: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.backend != "torch":
            return self.onnx.encode(texts, self.batch_size, normalize)
        arr = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(arr, dtype=np.float32)

    def encode_all(self, texts: Sequence[str], desc: str, chunk: int = 1024) -> np.ndarray:
        """`encode` for long batch work (sync, pipeline, re-index), showing its progress."""
        from semflow.progress import progress

        if len(texts) <= chunk:
            return self.encode(texts)
        parts = []
        with progress(desc, len(texts), "texts") as bar:
            for i in range(0, len(texts), chunk):
                parts.append(self.encode(texts[i : i + chunk]))
                bar.update(len(parts[-1]))
        return np.concatenate(parts)

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """Embed texts; cached rows (normalised only) are reused."""
        if self.cache is None or not normalize:
            return self._encode_raw(texts, normalize)
        keys = [text_key(self.version, t) for t in texts]
        cached = self.cache.get_many(keys)
        missing = [i for i, v in enumerate(cached) if v is None]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, v in enumerate(cached):
            if v is not None:
                out[i] = v
        if missing:
            fresh = self._encode_raw([texts[i] for i in missing], normalize)
            out[missing] = fresh
            self.cache.set_many({keys[i]: fresh[j] for j, i in enumerate(missing)})
        return out


def _embedder_home(settings: Settings, version: str) -> Path:
    # the weights are installed once, whichever backend runs them
    if _VERSION.match(version):
        version = weights_version(version)
    return settings.home / "embedders" / version.replace("/", "_")


def installed_embedder_dir(settings: Settings, version: str) -> Path | None:
    path = _embedder_home(settings, version)
    return path if (path / "config.json").is_file() or (path / "modules.json").is_file() else None


def install_embedder(settings: Settings, model_dir: Path, version: str) -> Path:
    """Copy a (fine-tuned) embedder to `$SEMFLOW_HOME/embedders/<version>`, atomically."""
    import shutil

    dest = _embedder_home(settings, version)
    if installed_embedder_dir(settings, version) is not None:
        return dest
    if embedder_version(model_dir, parse_version(version)[0]) != weights_version(version):
        raise ValueError(f"{model_dir} does not hold embedder {version}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _guard_file(settings: Settings, version: str) -> Path:
    return settings.home / "embedders" / f"{weights_version(version).replace('/', '_')}.guard.json"


def record_guard(settings: Settings, version: str, verdict: dict[str, Any]) -> None:
    """Record the int8 guard's verdict on the weights of `version` (atomically)."""
    path = _guard_file(settings, version)
    text = json.dumps(verdict, sort_keys=True)
    try:
        if path.is_file() and path.read_text() == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.rename(path)
    except OSError as err:  # a read-only home: the bundle's own verdict still applies
        log.warning("could not record the int8 guard's verdict in %s: %s", path, err)


def recorded_guard(settings: Settings, version: str) -> dict[str, Any] | None:
    """The int8 guard's verdict recorded on the weights of `version`, if any."""
    try:
        return dict(json.loads(_guard_file(settings, version).read_text()))
    except (OSError, ValueError):
        return None


def resolve_embedder(
    settings: Settings,
    version: str | None = None,
    *,
    model_dir: Path | None = None,
    name: str | None = None,
    required_by: str | None = None,
    batch_size: int | None = None,
    cache: Any | None = None,
    backend: str | None = None,
) -> Embedder:
    """The one way to pick an embedder's weights.

    `version` is the embedder wanted (an index generation's, a bundle's). Its weights come
    from `model_dir` when given (a bundle's fine-tuned embedder, a pipeline's fine-tune, named
    `name`), else from `$SEMFLOW_HOME/embedders/<version>` when installed (a promoted
    fine-tuned model, see `install_embedder`), else the configured base model. Without the
    installed copy an hourly sync would embed with the base model and undo the reindex that
    followed a promotion. `required_by` (e.g. "the bundle was trained with"): the weights
    found must be `version`, else ModelMismatchError; without it callers compare versions.

    `backend` runs them (default `SEMFLOW_BACKEND`, or fp32 ONNX when the int8 guard refused
    these weights' int8 export, see `record_guard`).
    """
    if model_dir is None and version:
        model_dir = installed_embedder_dir(settings, version)
    if model_dir is None:
        model_dir, name = settings.base_embedder_dir, settings.embedder_name
    elif name is None:
        name = parse_version(version)[0] if version else settings.embedder_name
    batch = batch_size or settings.embed_batch_size
    run = backend or settings.backend
    emb = Embedder(model_dir, name, settings.device, batch, cache, run, settings.home)
    fallback = run if backend else serving_backend(run, recorded_guard(settings, emb.version))
    if fallback != run:
        log.warning(
            "the int8 export of %s was refused by the quality guard: running %s",
            weights_version(emb.version),
            fallback,
        )
        emb = Embedder(model_dir, name, settings.device, batch, cache, fallback, settings.home)
    if required_by and version:
        check_embedder(emb.version, version, required_by)
    return emb
