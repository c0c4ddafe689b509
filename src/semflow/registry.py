"""MLflow registry: run tree per pipeline run, bundle registration, promotion gate, aliases.

One pipeline run = one parent MLflow run (found again by a key made of the data hash, git
commit and params, so every DVC stage process joins the same tree); each stage is a nested
run. The registered model `semflow` is a pyfunc whose only artifact is the bundle directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semflow.config import REPO_ROOT, get_settings
from semflow.errors import SemflowError
from semflow.models.bundle import BUNDLE_FILE, Bundle, bundle_digest, verify_bundle

log = logging.getLogger("semflow.registry")

MODEL_NAME = "semflow"
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "semflow"
# The bundle's sha256 (models.bundle.bundle_digest), set at registration: a bundle whose
# artifacts were changed in the artifact store afterwards is refused when loaded.
DIGEST_TAG = "bundle.sha256"


class RegistryError(SemflowError):
    """The registry could not be reached or holds something unexpected."""


def client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _is_missing(err: BaseException) -> bool:
    """The registry answered that the model or version does not exist (by MLflow's error
    code, which the local stores and the REST client both set; never by message text)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    return isinstance(err, MlflowException) and err.error_code == ErrorCode.Name(
        RESOURCE_DOES_NOT_EXIST
    )


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version `name@alias` points at; None when the model or the alias does not exist.

    Read from the registered model's aliases: MLflow answers a missing alias with the same
    code as a malformed request (INVALID_PARAMETER_VALUE), so asking for it directly cannot
    tell "no champion yet" from a real error. Any other failure is a RegistryError.
    """
    try:
        aliases = client(tracking_uri).get_registered_model(name).aliases or {}
    except Exception as err:
        if _is_missing(err):
            return None
        raise RegistryError(f"could not read {name}@{alias} from {tracking_uri}: {err}") from None
    version = aliases.get(alias)
    return None if version is None else str(version)


# -- provenance -----------------------------------------------------------------
def git_commit(repo: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dvc_data_hash(path: Path) -> str:
    """The md5 DVC records for `path` (from `<path>.dvc` or dvc.lock), else the file's md5."""
    import yaml

    path = Path(path)
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"])
    lock = REPO_ROOT / "dvc.lock"
    resolved = path.resolve()
    if lock.is_file() and resolved.is_relative_to(REPO_ROOT):
        rel = str(resolved.relative_to(REPO_ROOT))
        for stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if out.get("path") == rel and out.get("md5"):
                    return str(out["md5"])
    return file_md5(path) if path.is_file() else "missing"


# -- run tree -------------------------------------------------------------------
def pipeline_key(data_hash: str, commit: str, params: Mapping[str, Any]) -> str:
    blob = json.dumps({"d": data_hash, "c": commit, "p": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a sqlite DB (MLflow's default, ./mlruns, would land in the cwd)."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None


def ensure_experiment(tracking_uri: str, name: str = EXPERIMENT) -> str:
    """The experiment id of `name`, created with artifacts beside a sqlite store."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_root(tracking_uri))
    except Exception:  # another process created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def parent_run_id(
    tracking_uri: str, key: str, tags: Mapping[str, str], experiment: str = EXPERIMENT
) -> str:
    """The parent run of pipeline `key`, created on first use (stages run in separate processes)."""
    c = client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment)
    found = c.search_runs(
        [exp_id], filter_string=f"tags.`semflow.pipeline_key` = '{key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = c.create_run(
        exp_id, run_name=f"pipeline-{key[:8]}", tags={**tags, "semflow.pipeline_key": key}
    )
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@contextlib.contextmanager
def stage_run(
    tracking_uri: str, parent_id: str, stage: str, tags: Mapping[str, str] | None = None
) -> Iterator[Any]:
    """A nested MLflow run for one stage under the pipeline's parent run."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    parent = client(tracking_uri).get_run(parent_id)
    mlflow.set_experiment(experiment_id=parent.info.experiment_id)
    # Children carry the provenance tags, not the parent's identity (its pipeline key).
    inherited = {
        k: v
        for k, v in parent.data.tags.items()
        if not k.startswith("mlflow.") and k != "semflow.pipeline_key"
    }
    with mlflow.start_run(
        run_name=stage,
        parent_run_id=parent_id,
        tags={**inherited, **(tags or {}), "semflow.stage": stage},
    ) as run:
        yield run


# -- pyfunc wrapper ------------------------------------------------------------------
try:
    import mlflow.pyfunc as _pyfunc

    _Base: Any = _pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _Base = object


class SemflowPyfunc(_Base):
    """Pyfunc view of a bundle: DataFrame with `text` -> label, score."""

    def load_context(self, context: Any) -> None:
        from semflow.embedding import Embedder

        self.bundle = Bundle.load(context.artifacts["bundle"])
        model_dir = self.bundle.embedder_dir or get_settings().resolved_model_path
        self.embedder = Embedder(model_dir)

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
    name: str = MODEL_NAME,
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
        c.set_model_version_tag(name, version, _metric_tag(k), f"{float(v):.6f}")
    wait_ready(tracking_uri, name, version)
    return version


def wait_ready(tracking_uri: str, name: str, version: str, timeout_s: float = 300) -> None:
    c = client(tracking_uri)
    deadline = time.monotonic() + timeout_s
    while True:
        mv = c.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"model {name} version {version} is {mv.status}, not READY")
        time.sleep(0.5)


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
    bundle.model_name, bundle.model_version, bundle.alias = name, str(version), alias
    return bundle


def load_champion(
    tracking_uri: str, name: str = MODEL_NAME, alias: str = CHAMPION, dst: Path | None = None
) -> Bundle | None:
    """The bundle behind `name@alias`, or None when nothing is registered under that alias."""
    version = alias_version(tracking_uri, name, alias)
    if version is None:
        return None
    return load_version(tracking_uri, name, version, dst=dst, alias=alias)


def version_with_embedder(
    tracking_uri: str, embedder_version: str, name: str = MODEL_NAME
) -> str | None:
    """The newest registered version whose bundle used `embedder_version`, if any."""
    found = [
        int(mv.version)
        for mv in client(tracking_uri).search_model_versions(f"name='{name}'")
        if mv.tags.get("embedder_version") == embedder_version
    ]
    return str(max(found)) if found else None


# -- promotion gate ----------------------------------------------------------------
@dataclass
class GateResult:
    version: str
    promoted: bool
    alias: str
    reasons: list[str] = field(default_factory=list)
    previous_champion: str | None = None
    embedder_changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric_tag(metric: str) -> str:
    # MLflow tag keys may not contain "@" (as in "ndcg@10").
    return "metric." + metric.replace("@", "_at_")


def version_metrics(tracking_uri: str, name: str, version: str) -> dict[str, float]:
    """Metrics stored as tags on a model version (names as the pipeline writes them)."""
    mv = client(tracking_uri).get_model_version(name, version)
    return {
        k[len("metric.") :].replace("_at_", "@"): float(v)
        for k, v in mv.tags.items()
        if k.startswith("metric.")
    }


def check_gate(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    floors: Mapping[str, float],
    tolerance: float,
    compare: list[str],
) -> list[str]:
    """Reasons the candidate fails (empty list: it passes)."""
    reasons = []
    for metric, floor in floors.items():
        value = candidate.get(metric)
        if value is None:
            reasons.append(f"{metric} is missing from the candidate's metrics")
        elif value < float(floor):
            reasons.append(f"{metric} {value:.4f} is below the floor {float(floor):.4f}")
    if champion:
        for metric in compare:
            if (
                metric in champion
                and metric in candidate
                and candidate[metric] < champion[metric] - tolerance
            ):
                reasons.append(
                    f"{metric} {candidate[metric]:.4f} regresses more than {tolerance} "
                    f"against the champion's {champion[metric]:.4f}"
                )
    return reasons


@contextlib.contextmanager
def _promotion_lock(tracking_uri: str, name: str) -> Iterator[None]:
    """Serialise promoters on this host (file lock beside the sqlite DB, else under home).

    The alias write itself is atomic in MLflow; the lock makes read-champion -> compare ->
    set-alias one step, so a weaker racer cannot overwrite a stronger one it never saw.
    """
    if tracking_uri.startswith("sqlite:///"):
        base = Path(tracking_uri[len("sqlite:///") :]).parent
    else:
        base = get_settings().home
    base.mkdir(parents=True, exist_ok=True)
    with (base / f".promote-{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def promote(
    tracking_uri: str,
    version: str,
    *,
    floors: Mapping[str, float],
    tolerance: float,
    compare: list[str],
    name: str = MODEL_NAME,
    run_id: str | None = None,
    forced: Mapping[str, str] | None = None,
) -> GateResult:
    """Gate `version`: champion if it passes, else challenger; the reason is logged. `forced`
    (by, reason, changes) records that an operator weakened this gate: tags `gate.forced*`."""
    c = client(tracking_uri)
    wait_ready(tracking_uri, name, version)
    cand = version_metrics(tracking_uri, name, version)
    with _promotion_lock(tracking_uri, name):
        # No champion yet is normal; a registry that cannot be read stops the promotion.
        prev = alias_version(tracking_uri, name, CHAMPION)
        if prev == str(version):
            return GateResult(version, True, CHAMPION, ["already champion"], prev)
        champ = version_metrics(tracking_uri, name, prev) if prev else None
        reasons = check_gate(cand, champ, floors, tolerance, compare)
        promoted = not reasons
        alias = CHAMPION if promoted else CHALLENGER
        c.set_registered_model_alias(name, alias, str(version))
        summary = "passed the gate" if promoted else "; ".join(reasons)
        c.set_model_version_tag(
            name, str(version), "gate.result", "promoted" if promoted else "rejected"
        )
        c.set_model_version_tag(name, str(version), "gate.reason", summary[:4000])
        if forced:
            c.set_model_version_tag(name, str(version), "gate.forced", "true")
            for key, value in forced.items():
                c.set_model_version_tag(name, str(version), f"gate.forced_{key}", value[:4000])
        changed = False
        if promoted and prev:
            old = c.get_model_version(name, prev).tags.get("embedder_version")
            new = c.get_model_version(name, str(version)).tags.get("embedder_version")
            changed = old != new
    if run_id:
        c.set_tag(run_id, "gate.result", "promoted" if promoted else "rejected")
        c.set_tag(run_id, "gate.reason", summary[:4000])
        if forced:
            c.set_tag(run_id, "gate.forced", "true")
    if forced:
        log.warning(
            "model %s v%s was gated with a weakened gate, forced by %s (%s): %s",
            name,
            version,
            forced.get("by"),
            forced.get("reason"),
            forced.get("changes"),
        )
    log.info("model %s v%s: %s (%s)", name, version, alias, summary)
    return GateResult(str(version), promoted, alias, reasons, prev, changed)


def list_versions(tracking_uri: str, name: str = MODEL_NAME) -> list[dict[str, Any]]:
    """Every version of `name`, newest first, with its aliases, status and gate result."""
    c = client(tracking_uri)
    try:
        aliases = c.get_registered_model(name).aliases or {}
    except Exception as err:
        if _is_missing(err):
            return []
        raise RegistryError(f"could not read model {name} from {tracking_uri}: {err}") from None
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    out = [
        {
            "version": str(mv.version),
            "status": mv.status,
            "aliases": sorted(by_version.get(str(mv.version), [])),
            "gate": mv.tags.get("gate.result"),
            "reason": mv.tags.get("gate.reason"),
            "embedder_version": mv.tags.get("embedder_version"),
            "run_id": mv.run_id,
        }
        for mv in c.search_model_versions(f"name='{name}'")
    ]
    return sorted(out, key=lambda d: -int(d["version"]))


def check_ready(tracking_uri: str, version: str, name: str = MODEL_NAME) -> None:
    """Raise RegistryError unless `name` has a READY version `version`."""
    try:
        mv = client(tracking_uri).get_model_version(name, str(version))
    except Exception as err:
        if _is_missing(err):
            raise RegistryError(f"model {name} has no version {version}") from None
        raise RegistryError(f"could not read {name} v{version}: {err}") from None
    if mv.status != "READY":
        raise RegistryError(f"model {name} v{version} is {mv.status}, not READY")


def rollback(tracking_uri: str, version: str, name: str = MODEL_NAME) -> dict[str, Any]:
    """Point `champion` at an earlier READY version (no gate: an operator's decision)."""
    check_ready(tracking_uri, version, name)
    c = client(tracking_uri)
    with _promotion_lock(tracking_uri, name):
        # Same policy as promote: no champion yet is None, an unreadable registry an error
        # (guessing None here would record "rolled back from vNone" and hide the real one).
        prev = alias_version(tracking_uri, name, CHAMPION)
        c.set_registered_model_alias(name, CHAMPION, str(version))
        c.set_model_version_tag(name, str(version), "gate.reason", f"rolled back from v{prev}")
    log.info("model %s: champion v%s -> v%s (rollback)", name, prev, version)
    return {"champion": str(version), "previous_champion": prev}


# -- bento ---------------------------------------------------------------------------
def build_bento(version: str, repo: Path = REPO_ROOT, timeout_s: float = 900) -> dict[str, Any]:
    """Pin a registered version in the BentoML model store, then `bentoml build` a Bento that
    serves exactly it; skipped (not failed) when bentoml or the bentofile is unavailable."""
    import shutil as _shutil

    bentofile = repo / "bentofile.yaml"
    if not bentofile.is_file():
        return {"built": False, "reason": f"no {bentofile.name} in {repo}"}
    exe = Path(sys.executable).with_name("bentoml")
    cli = str(exe) if exe.exists() else _shutil.which("bentoml")
    if cli is None:
        return {"built": False, "reason": "the bentoml command is not installed"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "src")])}

    def run(cmd: list[str], what: str, check: bool = True) -> str | None:
        proc = subprocess.run(
            cmd, cwd=repo, capture_output=True, text=True, timeout=timeout_s, env=env
        )
        if proc.returncode != 0:
            if not check:
                return None
            raise RegistryError(f"{what} failed for version {version}: {proc.stderr[-800:]}")
        return proc.stdout

    tag = f"semflow:v{version}"
    if run([cli, "get", tag, "-o", "json"], "bentoml get", check=False) is not None:
        return {"built": True, "tag": tag, "note": "already in the store (a retry)"}
    pinned = run([sys.executable, "-m", "bentos.pin_model", str(version)], "pinning the bundle")
    model_tag = (pinned or "").strip().splitlines()[-1]
    build = [cli, "build", "-f", str(bentofile), "--version", f"v{version}"]
    run([*build, "--arg", f"model_tag={model_tag}", str(repo)], "bentoml build")
    return {"built": True, "tag": tag, "model_tag": model_tag}
