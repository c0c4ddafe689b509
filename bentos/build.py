"""Build the Bento `semflow:vN` that serves exactly registered version N, baked in.

`build_bento(N)` pins the version into the BentoML model store (`python -m bentos.pin_model`),
then runs `bentoml build --arg model_tag=<tag>` with bentofile.yaml. The register_model DAG
calls it after a promotion; it shells out, so this module itself never imports bentoml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from semflow.config import REPO_ROOT, get_settings
from semflow.registry import RegistryError, set_version_tags


def build_bento(version: str, repo: Path = REPO_ROOT, timeout_s: float = 900) -> dict[str, Any]:
    """Pin a registered version in the BentoML model store, then `bentoml build` a Bento that
    serves exactly it; skipped (not failed) when bentoml or the bentofile is unavailable."""
    bentofile = repo / "bentofile.yaml"
    if not bentofile.is_file():
        return {"built": False, "reason": f"no {bentofile.name} in {repo}"}
    exe = Path(sys.executable).with_name("bentoml")
    cli = str(exe) if exe.exists() else shutil.which("bentoml")
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
    s = get_settings()
    set_version_tags(s.tracking_uri, s.registered_model, version, {"lineage.bento_tag": tag})
    return {"built": True, "tag": tag, "model_tag": model_tag}
