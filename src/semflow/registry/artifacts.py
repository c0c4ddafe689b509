"""The registered model: a pyfunc whose only artifact is the bundle directory, logged with the
bundle's sha256 and metrics as version tags, and loaded back (downloaded once, verified)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semflow.config import get_settings
from semflow.models.bundle import BUNDLE_FILE, Bundle, bundle_digest, verify_bundle
from semflow.registry.promotion import CHAMPION, alias_version, metric_tag
from semflow.registry.tracking import RegistryError, client, wait_ready

# One logger for the whole registry package (what logging configs and operators filter on).
log = logging.getLogger("semflow.registry")

# The bundle's sha256 (models.bundle.bundle_digest), set at registration: a bundle whose
# artifacts were changed in the artifact store afterwards is refused when loaded.
DIGEST_TAG = "bundle.sha256"


# -- pyfunc wrapper ------------------------------------------------------------------
try:
    import mlflow.pyfunc as _pyfunc

    _Base: Any = _pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _Base = object


class SemflowPyfunc(_Base):
    """Pyfunc view of a bundle: DataFrame with `text` -> label, score."""

    def load_context(self, context: Any) -> None:
        self.bundle = Bundle.load(context.artifacts["bundle"])
        self.embedder = self.bundle.make_embedder(get_settings())

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # No type hints here: MLflow would try to derive a signature from them.
        import pandas as pd

        texts = [str(t) for t in model_input["text"]]
        rows = self.bundle.classify(self.embedder.encode(texts), top_k=1)
        return pd.DataFrame(
            {"label": [r["label"] for r in rows], "score": [r["score"] for r in rows]}
        )


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
    )


def log_bundle(
    bundle_dir: Path,
    *,
    tracking_uri: str,
    name: str,
    metrics: Mapping[str, float] | None = None,
    example_texts: list[str] | None = None,
) -> str:
    """Log the bundle as a pyfunc in the active run and register it (tagged with the bundle's
    sha256); return the version."""
    import mlflow
    import pandas as pd

    digest = bundle_digest(bundle_dir)  # before the upload: what was built is what is trusted
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    example = pd.DataFrame({"text": example_texts or ["I lost my card"]})
    info = mlflow.pyfunc.log_model(
        name="bundle",
        python_model=SemflowPyfunc(),
        artifacts={"bundle": str(bundle_dir)},
        signature=_signature(),
        input_example=example,
        registered_model_name=name,
        await_registration_for=300,
        pip_requirements=["semflow"],
    )
    version = str(info.registered_model_version)
    c = client(tracking_uri)
    manifest = json.loads((Path(bundle_dir) / BUNDLE_FILE).read_text())
    c.set_model_version_tag(name, version, DIGEST_TAG, digest)
    c.set_model_version_tag(name, version, "embedder_version", manifest["embedder_version"])
    for k, v in (metrics or {}).items():
        c.set_model_version_tag(name, version, metric_tag(k), f"{float(v):.6f}")
    wait_ready(tracking_uri, name, version)
    return version


# -- loading -----------------------------------------------------------------------
def _download_dir(tracking_uri: str, name: str, version: str) -> Path:
    tag = hashlib.sha256(tracking_uri.encode()).hexdigest()[:8]
    return get_settings().home / "models" / f"{name}-{tag}" / str(version)


def _find_bundle(root: Path) -> Path:
    for p in sorted(root.rglob(BUNDLE_FILE)):
        return p.parent
    raise RegistryError(f"no {BUNDLE_FILE} in the downloaded model at {root}")


def download_bundle(tracking_uri: str, name: str, version: str, dst: Path | None = None) -> Path:
    """Download (once) the bundle directory of a registered model version and check it
    against the version's `bundle.sha256` tag (BundleIntegrityError on a mismatch).

    Policy for versions registered before the tag existed: they load, with a warning, since
    there is nothing to compare with; registering them again adds the tag.
    """
    import shutil

    import mlflow

    target = Path(dst) if dst else _download_dir(tracking_uri, name, version)
    if not (target / ".complete").exists():
        if dst is None and target.exists():
            shutil.rmtree(target)  # our cache: a refused or partial copy must not linger
        target.mkdir(parents=True, exist_ok=True)
        mlflow.set_registry_uri(tracking_uri)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=str(target),
            tracking_uri=tracking_uri,
        )
        (target / ".complete").write_text(version)
    path = _find_bundle(target)
    expected = _registered_digest(tracking_uri, name, version)
    if expected is None:
        log.warning(
            "model %s v%s has no %s tag (registered before bundle checksums): loading it "
            "unverified; register it again to have it checked",
            name,
            version,
            DIGEST_TAG,
        )
        return path
    try:
        verify_bundle(path, expected, f"model {name} v{version}")
    except Exception:
        # The next attempt downloads afresh: a tampered cache heals, a tampered store does not.
        (target / ".complete").unlink(missing_ok=True)
        raise
    return path


def _registered_digest(tracking_uri: str, name: str, version: str) -> str | None:
    try:
        mv = client(tracking_uri).get_model_version(name, str(version))
    except Exception as err:
        raise RegistryError(f"could not read {name} v{version} from the registry: {err}") from None
    return mv.tags.get(DIGEST_TAG) or None


def load_version(
    tracking_uri: str, name: str, version: str, dst: Path | None = None, alias: str | None = None
) -> Bundle:
    """Download (once), verify and load the bundle of a registered model version."""
    # download_bundle has just checked it against the registry's tag, the authority here.
    bundle = Bundle.load(download_bundle(tracking_uri, name, version, dst), verify=False)
    bundle.registered_model, bundle.registry_version, bundle.alias = name, str(version), alias
    bundle.lineage = lineage_of(tracking_uri, name, version)
    return bundle


LINEAGE_PREFIX = "lineage."


def set_version_tags(tracking_uri: str, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Tag a registered version (lineage, the Bento it was built into, the index it serves)."""
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_model_version_tag(name, str(version), k, str(v))


def lineage_of(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """A version's `lineage.*` tags, without the prefix."""
    try:
        mv = client(tracking_uri).get_model_version(name, str(version))
    except Exception as err:
        raise RegistryError(f"could not read {name} v{version} from the registry: {err}") from None
    return {k[len(LINEAGE_PREFIX) :]: v for k, v in mv.tags.items() if k.startswith(LINEAGE_PREFIX)}


def load_champion(
    tracking_uri: str, name: str, alias: str = CHAMPION, dst: Path | None = None
) -> Bundle | None:
    """The bundle behind `name@alias`, or None when nothing is registered under that alias."""
    version = alias_version(tracking_uri, name, alias)
    if version is None:
        return None
    return load_version(tracking_uri, name, version, dst=dst, alias=alias)


def version_with_embedder(tracking_uri: str, embedder_version: str, name: str) -> str | None:
    """The newest registered version whose bundle used `embedder_version`, if any."""
    found = [
        int(mv.version)
        for mv in client(tracking_uri).search_model_versions(f"name='{name}'")
        if mv.tags.get("embedder_version") == embedder_version
    ]
    return str(max(found)) if found else None
