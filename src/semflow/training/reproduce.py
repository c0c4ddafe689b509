"""Reproduce a registered version from its lineage: its data from the DVC remote, its params
and dvc.lock from MLflow, the pipeline run again in a scratch workspace, metrics compared."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from semflow.config import Settings, get_settings
from semflow.errors import SemflowError
from semflow.training.common import STAGES, Paths, flat_metrics
from semflow.training.lineage import ARTIFACTS
from semflow.training.provenance import file_md5, git_commit

log = logging.getLogger("semflow.training")

# Stages that train from the snapshot: not `snapshot` (it reads today's index) nor `register`.
RETRAIN_STAGES = STAGES[1:-1]


class ReproduceError(SemflowError):
    """A version cannot be reproduced (no lineage, data missing from the remote, ...)."""


def _lineage_files(settings: Settings, run_id: str, dst: Path) -> Path:
    from semflow.registry import client

    dst.mkdir(parents=True, exist_ok=True)
    try:
        # The client's own tracking URI: mlflow.artifacts.* would fall back to the process's
        # default store (a stray ./mlflow.db) for part of the lookup.
        path = client(settings.tracking_uri).download_artifacts(run_id, ARTIFACTS, str(dst))
    except Exception as err:
        raise ReproduceError(f"the run {run_id} has no lineage files: {err}") from None
    return Path(path)


def params_as_trained(params_file: Path, lock_file: Path) -> bytes:
    """params.yaml as each stage ran: the file logged at registration, overlaid with the values
    dvc.lock recorded per stage. (The DAG that registers may run with other overrides than
    the one that trained: the lock is what the stages really read.)"""
    import yaml

    from semflow.training.params import _set_dotted

    params = yaml.safe_load(params_file.read_text())
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages") or {}
    for name in RETRAIN_STAGES:
        for key, value in (
            ((stages.get(name) or {}).get("params") or {}).get("params.yaml", {}).items()
        ):
            _set_dotted(params, key, value)
    return yaml.safe_dump(params, sort_keys=False).encode()


def reproduce(
    version: str,
    *,
    settings: Settings | None = None,
    workdir: Path | None = None,
    tolerance: float = 0.005,
    keep: bool = False,
) -> dict[str, Any]:
    """Fetch version `version`'s data and params, re-run validate..evaluate in a scratch
    workspace, and compare each registered metric (absolute difference <= `tolerance`)."""
    from semflow import registry
    from semflow.training.workspace import Workspace

    s = settings or get_settings()
    name = s.registered_model
    lineage = registry.lineage_of(s.tracking_uri, name, version)
    if "mlflow_run_id" not in lineage or "snapshot_md5" not in lineage:
        raise ReproduceError(
            f"{name} v{version} has no lineage (it was registered before lineage was recorded)"
        )
    registered = registry.version_metrics(s.tracking_uri, name, version)
    scratch = workdir or Path(tempfile.mkdtemp(prefix=f"semflow-reproduce-v{version}-"))
    root = scratch / "workspace"
    files = _lineage_files(s, lineage["mlflow_run_id"], scratch / "lineage")
    # The scratch run keeps its own state: nothing it does reaches the index or the registry.
    home = scratch / "home"
    own = s.model_copy(
        update={"home": home, "mlflow_tracking_uri": None, "dvc_remote_url": lineage["dvc_remote"]}
    )
    ws = Workspace(root, own)
    try:
        ws.prepare_exact(params_as_trained(files / "params.yaml", files / "dvc.lock"))
        shutil.copyfile(files / "dvc.lock", root / "dvc.lock")
        ws.dvc("pull", "data/snapshot/documents.csv")
        got = file_md5(root / "data" / "snapshot" / "documents.csv")
        if got != lineage["snapshot_md5"]:
            raise ReproduceError(
                f"the remote's snapshot has md5 {got}, the version was trained on "
                f"{lineage['snapshot_md5']}"
            )
        env = {"SEMFLOW_HOME": str(home), "SEMFLOW_MLFLOW_TRACKING_URI": own.tracking_uri}
        for stage in RETRAIN_STAGES:
            ws.repro(stage, force=True, env=env)
        metrics = flat_metrics(json.loads((Paths(root).metrics / "evaluate.json").read_text()))
    finally:
        if not keep and workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    compared = {
        k: {"registered": v, "reproduced": metrics.get(k), "diff": _diff(v, metrics.get(k))}
        for k, v in registered.items()
    }
    off = sorted(k for k, c in compared.items() if c["diff"] is None or c["diff"] > tolerance)
    return {
        "version": str(version),
        "lineage": lineage,
        "tolerance": tolerance,
        "metrics": compared,
        "reproduced": not off,
        "outside_tolerance": off,
        "code_commit_now": git_commit(),
    }


def _diff(a: float, b: float | None) -> float | None:
    return None if b is None else round(abs(a - b), 6)
