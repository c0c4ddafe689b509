"""
### Register and promote the candidate model

Runs on `semflow://candidate-model`. Logs the bundle (embedder, classifier, ranker weights,
labels, threshold) as a version of the MLflow model named by SEMFLOW_REGISTERED_MODEL
(default `semflow`), then gates it: absolute floors
from params.yaml and no regression beyond the tolerance against `champion`. A passing version
becomes `champion`; a failing one `challenger`, with the reason on the version. After a
promotion a Bento is built (skipped when bentoml or bentofile.yaml is missing) and, if the
embedding model changed, the index is rebuilt as a new generation, checked on golden queries
and only then switched. Emits `semflow://champion`.

`overrides` may not weaken the gate (lower or drop a floor, raise the tolerance, compare
fewer metrics): such a run fails unless an operator sets
`force` with a `force_reason`; the version then carries `gate.forced=true`, who and why.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, Param, dag, task

from semflow.config import dag_default_args

CANDIDATE = Asset("semflow://candidate-model")
CHAMPION = Asset("semflow://champion")


@dag(
    schedule=[CANDIDATE],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=dag_default_args(),
    tags=["semflow", "registry"],
    doc_md=__doc__,
    params={
        "build_bento": Param(True, type="boolean", description="Build a Bento after promotion"),
        "reindex": Param(True, type="boolean", description="Rebuild the index on a new embedder"),
        "overrides": Param({}, type="object", description="params.yaml overrides, dotted keys"),
        "force": Param(
            False, type="boolean", description="Allow overrides that weaken the promotion gate"
        ),
        "force_reason": Param("", type="string", description="Why the gate is weakened"),
    },
)
def register_model():
    @task(outlets=[CHAMPION])
    def register(params=None, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from semflow.errors import SettingsError
        from semflow.training.workspace import Workspace, dag_stage

        try:
            gate = dag_stage(
                "register",
                params["overrides"],
                force=params["force"],
                forced_by=getattr(dag_run, "triggering_user_name", None),
                reason=params["force_reason"],
            )
        except SettingsError as err:
            # Bad or gate-weakening overrides do not change on retry: fail now.
            raise AirflowFailException(str(err)) from err
        # The data every registered version was trained on goes to the DVC remote (a
        # retry pushes what a failed push left behind).
        Workspace.for_home().push()
        return gate

    @task
    def bento(gate: dict, params=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from bentos.build import build_bento

        if not (params["build_bento"] and gate.get("promoted")):
            raise AirflowSkipException("no promotion or bento build turned off")
        result = build_bento(gate["version"])
        if not result["built"]:
            raise AirflowSkipException(result["reason"])
        return result

    @task
    def reindex(gate: dict, params=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from semflow.training import dag_reindex

        if not (params["reindex"] and gate.get("promoted")):
            raise AirflowSkipException("no promotion or reindex turned off")
        return dag_reindex(params["overrides"], version=gate["version"])

    gate = register()
    bento(gate)
    reindex(gate)


register_model()
