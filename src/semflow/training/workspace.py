"""The DVC workspace the Airflow DAGs train in: one pipeline, one cache, one lineage.

`$SEMFLOW_HOME/pipeline` is a DVC repository (no git) holding what `dvc repro` needs: dvc.yaml,
the stage scripts (`training/`), the library code the stages depend on (`src/semflow`), the
reference data params.yaml names, and params.yaml itself with the run's overrides. Everything
is copied from the code checkout before a stage runs (a file is rewritten only when its bytes
differ), then `dvc repro --single-item <stage>` decides, from dvc.lock, whether the stage
reruns: unchanged data, params and code rerun nothing. Its cache lives beside it and `push`
sends the data a registered version was trained on to the DVC remote
(`SEMFLOW_DVC_REMOTE`), from where `reproduce` fetches it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from semflow.config import REPO_ROOT, Settings, get_settings, load_params
from semflow.errors import SemflowError, Verdict
from semflow.training.common import FORCED_ENV, RESULT_PREFIX, VERDICT_EXIT
from semflow.training.params import (
    _set_dotted,
    check_gate_overrides,
    load_pipeline_params,
    parse_params,
)

log = logging.getLogger("semflow.training")

# What a stage's command and deps name, relative to the checkout (dvc.yaml is the authority:
# tests/unit/test_workspace.py checks every dep of every stage is copied).
CODE = ("dvc.yaml", "training", "src/semflow")
REMOTE = "storage"


class PipelineError(SemflowError):
    """A DVC command of the pipeline failed; the sentence carries the end of its output."""


class StageRejected(PipelineError, Verdict):
    """A stage stopped on a verdict (its data failed a check, a param is invalid): the
    sentence is the stage's own; retrying changes nothing."""


@dataclass
class StageRun:
    """One `dvc repro --single-item`: whether the stage ran, and its result if it did."""

    stage: str
    ran: bool
    result: dict[str, Any] | None
    output: str


class Workspace:
    """A DVC workspace at `root`, fed from the code checkout `repo`."""

    def __init__(self, root: Path, settings: Settings, repo: Path = REPO_ROOT) -> None:
        self.root = root
        self.settings = settings
        self.repo = repo

    @classmethod
    def for_home(cls, settings: Settings | None = None) -> Workspace:
        s = settings or get_settings()
        return cls(s.home / "pipeline", s)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """One DAG task at a time in the workspace: tasks of different DAGs (a snapshot while
        a training runs) would otherwise rewrite params.yaml and race on DVC's own lock."""
        from semflow.index.lock import file_lock

        path = self.root.parent / f".{self.root.name}.lock"
        return file_lock(path, self.settings.pipeline_lock_timeout_s, "the pipeline workspace")

    # -- set-up --------------------------------------------------------------------
    def prepare(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Copy the pipeline in and write params.yaml (+ `overrides`, validated first)."""
        params = load_params(self.repo / "params.yaml")
        for key, value in (overrides or {}).items():
            _set_dotted(params, key, value)
        self.prepare_exact(yaml.safe_dump(params, sort_keys=False).encode())
        return params

    def prepare_exact(self, params_yaml: bytes) -> None:
        """Copy the pipeline in with exactly this params.yaml (a registered version's)."""
        parsed = parse_params(yaml.safe_load(params_yaml))  # bad params fail before DVC runs
        self.root.mkdir(parents=True, exist_ok=True)
        for rel in CODE:
            _mirror(self.repo / rel, self.root / rel)
        for rel in _data_files(parsed):
            _mirror(self.repo / rel, self.root / rel)
        _write_if_changed(self.root / "params.yaml", params_yaml)
        if not (self.root / ".dvc").is_dir():
            self.dvc("init", "--no-scm", "-q")
        self._configure_remote()

    def _configure_remote(self) -> None:
        url = self.settings.dvc_remote
        self.dvc("remote", "add", "--force", "--default", REMOTE, url)
        if url.startswith("s3://") and self.settings.s3_endpoint_url:
            self.dvc("remote", "modify", REMOTE, "endpointurl", self.settings.s3_endpoint_url)

    # -- running ------------------------------------------------------------------
    def dvc(self, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> str:
        """Run `dvc <args>` in the workspace; its output goes to the log line by line."""
        exe = Path(sys.executable).with_name("dvc")
        cmd = [str(exe) if exe.exists() else "dvc", *args]
        # The stages' `python` must be this interpreter (the one semflow is installed in).
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env={**os.environ, **(env or {}), "PATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            log.info("dvc: %s", line.rstrip())
        out = "".join(lines)
        if proc.wait() != 0 and check:
            said = [ln for ln in lines if ln.startswith("semflow ")]
            if f"exited with {VERDICT_EXIT}" in out and said:
                raise StageRejected(said[-1].strip().split(": ", 1)[-1])
            raise PipelineError(f"dvc {' '.join(args)} failed: {out[-1500:].strip()}")
        return out

    def repro(
        self, stage: str, *, force: bool = False, env: Mapping[str, str] | None = None
    ) -> StageRun:
        """`dvc repro --single-item <stage>`: runs it only when its deps changed (or `force`)."""
        out = self.dvc("repro", "--single-item", *(["--force"] if force else []), stage, env=env)
        ran = f"Running stage '{stage}'" in out
        result = None
        for line in out.splitlines():
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
        return StageRun(stage, ran, result, out)

    def push(self) -> None:
        """Send every output dvc.lock records (snapshot, splits, models) to the remote."""
        with self.lock():
            self.dvc("push", "-q")


def dag_stage(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    forced_by: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One DVC stage in the workspace with params.yaml + the DAG run's overrides: what every
    training task of the DAGs runs. `ran` says whether DVC ran it (False: nothing it depends
    on changed since it last ran, and its outputs are those of that run).

    Run conf is not params.yaml's review: overrides may not weaken the promotion gate of
    `register` unless `force` (an operator's decision, recorded on the model version)."""
    params = load_pipeline_params(overrides=overrides)  # bad overrides fail before DVC work
    env = {}
    if name == "register":
        forced = check_gate_overrides(params, force=force, forced_by=forced_by, reason=reason)
        if forced:
            env[FORCED_ENV] = json.dumps(forced)
    ws = Workspace.for_home()
    with ws.lock():
        ws.prepare(overrides)
        run = ws.repro(name, env=env)
    if run.ran and run.result is None:
        raise PipelineError(f"stage {name} ran but printed no result: {run.output[-800:]}")
    return {"ran": run.ran, **(run.result or {})}


def _data_files(params: Any) -> list[str]:
    """The repo-relative data files params name (absolute paths are used where they are)."""
    named = [params.validate_.reference, params.validate_.allowed_labels]
    named.append(params.prepare.external_test)
    return [p for p in named if p and not Path(p).is_absolute()]


def _write_if_changed(dst: Path, data: bytes) -> None:
    if dst.is_file() and dst.read_bytes() == data:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def _files(src: Path) -> Iterable[Path]:
    if src.is_file():
        yield src
        return
    for p in sorted(src.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            yield p


def _mirror(src: Path, dst: Path) -> None:
    """Make `dst` hold exactly `src`'s files (a file or a folder), rewriting only changes."""
    if not src.exists():
        raise PipelineError(f"{src} does not exist: the pipeline needs it in the workspace")
    wanted = set()
    for f in _files(src):
        rel = f.relative_to(src) if src.is_dir() else Path()
        target = dst / rel if src.is_dir() else dst
        wanted.add(target)
        _write_if_changed(target, f.read_bytes())
    if src.is_dir():
        for f in list(_files(dst)):
            if f not in wanted:
                f.unlink()  # a module deleted from the checkout leaves the workspace too
        for d in sorted((p for p in dst.rglob("*") if p.is_dir()), reverse=True):
            if not any(d.iterdir()):
                shutil.rmtree(d)
