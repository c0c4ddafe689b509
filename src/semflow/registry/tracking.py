"""The MLflow client and the run tree: one parent run per pipeline run, one nested run per stage.

The parent is found again by its pipeline key (training.provenance.pipeline_key), so every
DVC stage process joins the same tree. Also the registry's error type and the two checks every
other registry module needs: "does not exist" and "is the version READY".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from semflow.errors import SemflowError

EXPERIMENT = "semflow"


class RegistryError(SemflowError):
    """The registry could not be reached or holds something unexpected."""


def client(tracking_uri: str) -> Any:
    """An MlflowClient on `tracking_uri` for both tracking and the model registry."""
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


def wait_ready(tracking_uri: str, name: str, version: str, timeout_s: float = 300) -> None:
    """Block until model `name` version `version` is READY; RegistryError if it fails or
    `timeout_s` passes."""
    c = client(tracking_uri)
    deadline = time.monotonic() + timeout_s
    while True:
        mv = c.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"model {name} version {version} is {mv.status}, not READY")
        time.sleep(0.5)


# -- run tree -------------------------------------------------------------------
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
