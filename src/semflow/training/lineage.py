"""A registered version's lineage: what it was trained from, as version tags + artifacts.

The register stage records it (in the checkout and in the Airflow workspace alike): the DVC
md5 of the snapshot, digests of dvc.lock and params.yaml (both also logged as artifacts
under `lineage/`), the git commit, the MLflow run, the Airflow dag/run when there is one, the
embedder version and the DVC remote the data was pushed to. Later steps add the Bento tag and
the index generation. `reproduce` reads it back.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from semflow.training.common import Paths
from semflow.training.provenance import dvc_data_hash, git_commit, locked_md5

PREFIX = "lineage."
ARTIFACTS = "lineage"
# Files of the pipeline's root logged with the version: enough to run it again.
FILES = ("dvc.lock", "params.yaml", "dvc.yaml")


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def snapshot_md5(paths: Paths) -> str:
    """The md5 of the snapshot the model was trained on: what dvc.lock says `prepare` read
    (a newer snapshot may have been taken since), else the snapshot's, else the file's."""
    rel = paths.snapshot.relative_to(paths.root).as_posix()
    where = (("prepare", "deps"), ("snapshot", "outs"))
    return locked_md5(paths.root / "dvc.lock", rel, where) or dvc_data_hash(paths.snapshot)


def lineage_tags(
    paths: Paths, *, run_id: str, embedder_version: str, dvc_remote: str
) -> dict[str, str]:
    """The tags naming what a version was trained from (keys start with `lineage.`)."""
    tags = {
        "snapshot_md5": snapshot_md5(paths),
        "dvc_lock_sha256": _sha256(paths.root / "dvc.lock"),
        "params_sha256": _sha256(paths.root / "params.yaml"),
        "git_commit": git_commit(),
        "mlflow_run_id": run_id,
        "embedder_version": embedder_version,
        "dvc_remote": dvc_remote,
        # Airflow puts the task's context in its environment; DVC passes it to the stage.
        "airflow_dag_id": os.environ.get("AIRFLOW_CTX_DAG_ID"),
        "airflow_run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
    }
    return {PREFIX + k: str(v) for k, v in tags.items() if v}


def log_lineage_files(paths: Paths) -> list[str]:
    """Log dvc.lock, params.yaml and dvc.yaml of the root to the active run; the names."""
    import mlflow

    logged = []
    for name in FILES:
        f = paths.root / name
        if f.is_file():
            mlflow.log_artifact(str(f), artifact_path=ARTIFACTS)
            logged.append(name)
    return logged
