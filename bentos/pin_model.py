"""Copy a registered bundle into the BentoML model store, so `bentoml build` can bake it in.

Usage: python -m bentos.pin_model VERSION  ->  prints the model tag (semflow-bundle:vN).
`bentos.build.build_bento` runs it, then `bentoml build --arg model_tag=<tag>`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import bentoml

from semflow.config import get_settings
from semflow.models.bundle import BUNDLE_FILE
from semflow.registry import download_bundle, lineage_of

STORE_NAME = "semflow-bundle"


def pin(version: str) -> str:
    """Copy version `version` of the registered model (SEMFLOW_REGISTERED_MODEL) into the
    store; return its tag."""
    s = get_settings()
    name = s.registered_model
    tag = f"{STORE_NAME}:v{version}"
    try:
        return str(bentoml.models.get(tag).tag)  # already pinned: the store is immutable
    except bentoml.exceptions.NotFound:
        pass
    src = download_bundle(s.tracking_uri, name, version)
    with bentoml.models.create(
        tag,
        labels={"registered_model": name, "registered_version": str(version)},
    ) as model:
        shutil.copytree(src, model.path, dirs_exist_ok=True)
        manifest = Path(model.path) / BUNDLE_FILE
        meta = json.loads(manifest.read_text())
        # Which version it is and what it was trained from travel along (outside the digest).
        lineage = {**lineage_of(s.tracking_uri, name, version), "bento_tag": f"semflow:v{version}"}
        meta.update(registered_model=name, registry_version=str(version), lineage=lineage)
        manifest.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return tag


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bentos.pin_model VERSION")
    print(pin(sys.argv[1]))
