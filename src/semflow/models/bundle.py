"""The model bundle: everything the service needs, saved as one directory.

Layout: `bundle.json` (labels, threshold, operating point, ranker weights, versions, tags,
checksum),
`classifier.joblib` (sklearn estimator on L2-normalised embeddings) and, when the
embedder was fine-tuned, an `embedder/` sentence-transformers directory with its ONNX
exports in `embedder/onnx/<backend>/` (built at registration, so a Bento never exports).

`backend_guard` is the int8 quality guard's verdict (semflow.models.backend_guard): when it
refused the int8 export, an embedder made for `SEMFLOW_BACKEND=onnx-int8` runs on fp32 ONNX.

Integrity: `bundle_digest` is a sha256 over every file and the manifest's content fields.
`save` records it in `bundle.json` and the registry records it as the model version's tag
`bundle.sha256`; `load` refuses a bundle that no longer matches (joblib.load runs code), see
`verify_bundle`. A bundle saved before checksums existed carries none and loads unchecked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semflow.config import Settings
from semflow.errors import ModelMismatchError, SemflowError

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
CLASSIFIER_FILE = "classifier.joblib"
EMBEDDER_DIR = "embedder"
UNKNOWN = "unknown"
FORMAT_VERSION = 1
DIGEST_KEY = "sha256"
# Lineage that is rewritten after registration (bentos/pin_model.py) and so is not content.
# Where the registry put a bundle, not what it is: outside the digest. (`model_name` and
# `model_version` are those keys' names in bundles written before the rename.)
_UNHASHED_KEYS = frozenset(
    {
        DIGEST_KEY,
        "registered_model",
        "registry_version",
        "model_name",
        "model_version",
        "alias",
        "lineage",
    }
)


class BundleError(SemflowError):
    """A bundle directory is missing, incomplete or incompatible."""


class BundleIntegrityError(BundleError):
    """A bundle's files no longer match the checksum recorded when it was saved/registered."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_digest(path: Path | str) -> str:
    """sha256 over what `load` reads: bundle.json's content fields (not the digest itself nor
    the lineage fields), then the path and sha256 of `classifier.joblib` and of every file
    under `embedder/`. Files beside them (BentoML's model.yaml) are not part of the bundle."""
    root = Path(path)
    manifest = json.loads((root / BUNDLE_FILE).read_text())
    content = {k: v for k, v in manifest.items() if k not in _UNHASHED_KEYS}
    h = hashlib.sha256(b"semflow-bundle-digest-1\n")
    canon = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    h.update(f"{BUNDLE_FILE}\0{hashlib.sha256(canon).hexdigest()}\n".encode())
    files = [CLASSIFIER_FILE] if (root / CLASSIFIER_FILE).exists() else []
    files += sorted(
        p.relative_to(root).as_posix() for p in (root / EMBEDDER_DIR).rglob("*") if p.is_file()
    )
    for rel in files:
        h.update(f"{rel}\0{_file_sha256(root / rel)}\n".encode())
    return h.hexdigest()


def verify_bundle(path: Path | str, expected: str, what: str | None = None) -> None:
    """Raise BundleIntegrityError unless the bundle at `path` has digest `expected`."""
    found = bundle_digest(path)
    if found != expected:
        raise BundleIntegrityError(
            f"{what or f'the bundle at {path}'} does not match the checksum recorded for it "
            f"(sha256 {expected[:12]}..., found {found[:12]}...): its files changed after it was "
            "saved, so it is not loaded; register it again from a trusted bundle or roll back "
            "to another version"
        )


@dataclass
class Bundle:
    """Embedder reference + fitted classifier + ranker weights + label set + threshold."""

    embedder_dir: Path | None
    embedder_version: str
    labels: list[str]
    threshold: float
    ranker_weights: dict[str, float]
    classifier: Any = None
    registered_model: str | None = None
    registry_version: str | None = None
    alias: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # What the registered version was trained from (semflow.training.lineage), when known.
    lineage: dict[str, str] = field(default_factory=dict)
    # The int8 quality guard's verdict ({}: registered before the guard, int8 not refused).
    backend_guard: dict[str, Any] = field(default_factory=dict)
    # The unknown threshold's operating point as evaluated (expected in-scope coverage, OOS
    # recall, ...): what `/labels` reports.
    operating_point: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise BundleError(f"bundle threshold must be within [0, 1], got {self.threshold}")
        if self.classifier is not None:
            classes = [str(c) for c in getattr(self.classifier, "classes_", [])]
            if classes and classes != list(self.labels):
                raise BundleError("bundle labels do not match the classifier's classes")

    def make_embedder(
        self, settings: Settings, cache: Any | None = None, batch_size: int | None = None
    ) -> Any:
        """An Embedder of the weights `embedder_version` names (BundleError when the weights
        found are another model's; the configured base model when not fine-tuned), run by
        `SEMFLOW_BACKEND`, or fp32 ONNX when the guard refused this bundle's int8 export."""
        from semflow.embedding import format_version, parse_version, record_guard, resolve_embedder
        from semflow.models.backend_guard import serving_backend

        backend = serving_backend(settings.backend, self.backend_guard)
        if backend != settings.backend:
            log.warning(
                "the int8 export of %s was refused by the quality guard (%s): serving %s",
                self.embedder_version,
                "; ".join(self.backend_guard.get("reasons") or []),
                backend,
            )
        try:
            name, digest, _ = parse_version(self.embedder_version)
        except ValueError as err:
            raise BundleError(f"the bundle's embedder: {err}") from None
        try:
            emb = resolve_embedder(
                settings,
                format_version(name, digest, backend),
                model_dir=self.embedder_dir,
                required_by="the bundle was trained with",
                batch_size=batch_size,
                cache=cache,
                backend=backend,
            )
        except ModelMismatchError as err:
            raise BundleError(str(err)) from None
        if self.backend_guard:
            # the sync embeds for the index this model serves: same weights, same backend
            record_guard(settings, emb.version, self.backend_guard)
        return emb

    # -- inference ---------------------------------------------------------------
    def _matrix(self, embeddings: np.ndarray) -> np.ndarray:
        if self.classifier is None:
            raise BundleError("this bundle has no classifier")
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise BundleError(f"embeddings must be a 2-d array, got shape {x.shape}")
        return x

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities `[n, len(labels)]` for normalised embeddings."""
        x = self._matrix(embeddings)
        return np.asarray(self.classifier.predict_proba(x), dtype=np.float64)

    def classify(self, embeddings: np.ndarray, top_k: int = 1) -> list[dict[str, Any]]:
        """Top label per row with its top-k alternatives and OOS score: "unknown" when the OOS
        score is above the threshold (semflow.models.oos). A classifier saved before the OOS
        score existed has none: "unknown" below the threshold on the top probability."""
        if top_k < 1:
            raise BundleError(f"top_k must be at least 1, got {top_k}")
        x = self._matrix(embeddings)
        proba = np.asarray(self.classifier.predict_proba(x), dtype=np.float64)
        oos = None
        if getattr(self.classifier, "oos", None) is not None:
            oos = self.classifier.oos_score(x, proba)
        k = min(top_k, proba.shape[1])
        out: list[dict[str, Any]] = []
        for i, row in enumerate(proba):
            order = np.argsort(-row, kind="stable")[:k]
            best = int(order[0])
            score = float(row[best])
            unknown = score < self.threshold if oos is None else oos[i] > self.threshold
            out.append(
                {
                    "label": UNKNOWN if unknown else self.labels[best],
                    "score": score,
                    "oos_score": None if oos is None else float(oos[i]),
                    "alternatives": [
                        {"label": self.labels[int(j)], "score": float(row[int(j)])} for j in order
                    ],
                }
            )
        return out

    # -- persistence -------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "embedder_dir": EMBEDDER_DIR if self.embedder_dir is not None else None,
            "embedder_version": self.embedder_version,
            "labels": list(self.labels),
            "threshold": float(self.threshold),
            "ranker_weights": {k: float(v) for k, v in self.ranker_weights.items()},
            "registered_model": self.registered_model,
            "registry_version": self.registry_version,
            "alias": self.alias,
            "tags": dict(self.tags),
            "lineage": dict(self.lineage),
            "backend_guard": dict(self.backend_guard),
            "operating_point": {k: float(v) for k, v in self.operating_point.items()},
        }

    def save(self, path: Path | str, onnx_home: Path | None = None) -> Path:
        """Write the bundle directory (copying a fine-tuned embedder into `embedder/`, with
        its ONNX exports when `onnx_home` holds or may build them) with its digest in
        `bundle.json`."""
        import shutil

        import joblib

        dest = Path(path)
        dest.mkdir(parents=True, exist_ok=True)
        if self.classifier is not None:
            joblib.dump(self.classifier, dest / CLASSIFIER_FILE)
        if self.embedder_dir is not None:
            src = Path(self.embedder_dir).resolve()
            target = (dest / EMBEDDER_DIR).resolve()
            if src != target:
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(src, target)
            if onnx_home is not None:
                from semflow.embedding import weights_version
                from semflow.onnx_backend import ship_exports

                ship_exports(target, weights_version(self.embedder_version), onnx_home, target)
        manifest = self.manifest()
        (dest / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        manifest[DIGEST_KEY] = bundle_digest(dest)
        (dest / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return dest

    @classmethod
    def load(cls, path: Path | str, verify: bool = True) -> Bundle:
        """Read a bundle directory written by `save`; unless `verify` is off (the caller has
        just checked it), refuse one whose files differ from the digest it records."""
        import joblib

        src = Path(path)
        manifest_path = src / BUNDLE_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{src} is not a semflow bundle (no {BUNDLE_FILE})")
        try:
            m = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise BundleError(f"{manifest_path} is not valid JSON: {err}") from None
        if m.get("format") != FORMAT_VERSION:
            raise BundleError(f"unsupported bundle format {m.get('format')!r} in {manifest_path}")
        if verify and m.get(DIGEST_KEY):
            verify_bundle(src, str(m[DIGEST_KEY]), f"the bundle at {src}")
        clf_path = src / CLASSIFIER_FILE
        classifier = joblib.load(clf_path) if clf_path.is_file() else None
        emb = src / EMBEDDER_DIR if m.get("embedder_dir") else None
        if emb is not None and not emb.is_dir():
            raise BundleError(f"bundle {src} names an embedder directory that is missing")
        return cls(
            embedder_dir=emb,
            embedder_version=m["embedder_version"],
            labels=list(m["labels"]),
            threshold=float(m["threshold"]),
            ranker_weights=dict(m.get("ranker_weights") or {}),
            classifier=classifier,
            registered_model=m.get("registered_model", m.get("model_name")),
            registry_version=m.get("registry_version", m.get("model_version")),
            alias=m.get("alias"),
            tags=dict(m.get("tags") or {}),
            lineage=dict(m.get("lineage") or {}),
            backend_guard=dict(m.get("backend_guard") or {}),
            operating_point=dict(m.get("operating_point") or {}),
        )
