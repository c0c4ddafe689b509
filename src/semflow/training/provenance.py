"""Where a pipeline run comes from: the git commit, the data's hash and the key that ties
every stage of one run to the same parent MLflow run (registry.tracking.parent_run_id)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from semflow.config import REPO_ROOT


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD's commit of `repo`, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes (read in 1 MiB chunks)."""
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
    resolved = path.resolve()
    if resolved.is_relative_to(REPO_ROOT):
        rel = resolved.relative_to(REPO_ROOT).as_posix()
        found = locked_md5(REPO_ROOT / "dvc.lock", rel)
        if found:
            return found
    return file_md5(path) if path.is_file() else "missing"


def locked_md5(
    lock: Path, rel: str, where: Sequence[tuple[str | None, str]] = ((None, "outs"),)
) -> str | None:
    """The md5 `lock` (a dvc.lock) records for the repo-relative path `rel`: the first match
    among `where`, pairs of (stage, "outs" or "deps"); a stage of None means any stage."""
    import yaml

    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    for stage, key in where:
        entries = [stages.get(stage) or {}] if stage else list(stages.values())
        for entry in (e for s in entries for e in s.get(key) or []):
            if entry.get("path") == rel and entry.get("md5"):
                return str(entry["md5"])
    return None


def pipeline_key(data_hash: str, commit: str, params: Mapping[str, Any]) -> str:
    """The pipeline run's identity: same data, code and params -> same parent run."""
    blob = json.dumps({"d": data_hash, "c": commit, "p": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
