"""MLflow registry: run tree per pipeline run, bundle registration, promotion gate, aliases.

One pipeline run = one parent MLflow run (found again by a key made of the data hash, git
commit and params, so every DVC stage process joins the same tree); each stage is a nested
run. The registered model (its name is `Settings.registered_model`) is a pyfunc whose only
artifact is the bundle directory.

- `tracking`: the client, the experiment and the run tree, RegistryError;
- `artifacts`: logging a bundle as a model version, downloading and loading it back;
- `promotion`: the gate, the champion/challenger aliases, listing and rollback.

The names below are re-exported, so `from semflow import registry; registry.promote(...)`
works. Provenance (git commit, data hash, pipeline key) lives in `semflow.training.provenance`,
the Bento build in `bentos/build.py`.
"""

from __future__ import annotations

from semflow.registry.artifacts import (
    DIGEST_TAG,
    SemflowPyfunc,
    download_bundle,
    lineage_of,
    load_champion,
    load_version,
    log_bundle,
    set_version_tags,
    version_with_embedder,
)
from semflow.registry.promotion import (
    CHALLENGER,
    CHAMPION,
    GateResult,
    alias_version,
    check_gate,
    check_ready,
    list_versions,
    metric_tag,
    promote,
    rollback,
    version_metrics,
)
from semflow.registry.tracking import (
    EXPERIMENT,
    RegistryError,
    artifact_root,
    client,
    ensure_experiment,
    parent_run_id,
    stage_run,
    wait_ready,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DIGEST_TAG",
    "EXPERIMENT",
    "GateResult",
    "RegistryError",
    "SemflowPyfunc",
    "alias_version",
    "artifact_root",
    "check_gate",
    "check_ready",
    "client",
    "download_bundle",
    "ensure_experiment",
    "lineage_of",
    "list_versions",
    "load_champion",
    "load_version",
    "log_bundle",
    "metric_tag",
    "parent_run_id",
    "promote",
    "rollback",
    "set_version_tags",
    "stage_run",
    "version_metrics",
    "version_with_embedder",
    "wait_ready",
]
