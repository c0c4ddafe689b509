"""Each published generation lists its files, and nothing opens one that lacks any of them.

A generation copied or restored only in part (an interrupted `cp` or `rsync`, a full disk)
still opens in qdrant-edge, and the engine then repairs it in place: points whose id
mappings are missing are dropped, and their payloads and index entries are deleted from the
files that are there. Completing the copy afterwards no longer brings them back, and a file
the engine writes that way may be a hard link shared with the generation being served
(`clone_generation`). So the writer records every file's size in `manifest.json` when it
publishes (before `meta.json`, which marks the generation published), and the store checks
the list before the engine sees the directory: a file missing or of another size refuses
the open with a sentence and leaves every byte as it was.

The engine's journals (`*journal*`) are left out: it replays and deletes them when it opens
a shard. Its JSON configs (`edge_config.json`, each segment's `segment.json`) must be there at
any size: it rewrites them when it loads a shard (a copied segment's after `to_hot`, say).
The data files, which it writes only when it changes points or repairs a shard, must be
there at their published sizes. A generation whose metadata says it has a manifest is
refused without one; generations published before manifests are opened unchecked.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semflow.errors import IndexError_
from semflow.index.edge_tier import durable_write

MANIFEST = "manifest.json"
MANIFEST_FLAG = "manifest"  # in meta.json: published with a manifest, so one must be there
_OWN = ("meta.json", MANIFEST)  # the generation's own files, not the engine's
_TRANSIENT = "*journal*"
_REWRITTEN = "*.json"  # configs, rewritten by the engine when it loads the shard


def file_sizes(path: Path) -> dict[str, int]:
    """Size of every file of the shard at `path` the engine needs, by relative path."""
    sizes: dict[str, int] = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if rel in _OWN or fnmatch.fnmatch(name, _TRANSIENT):
                continue
            sizes[rel] = os.stat(full).st_size
    return dict(sorted(sizes.items()))


def write_manifest(path: Path) -> None:
    """Record the shard's files as they are now, durably (the shard is closed)."""
    durable_write(path / MANIFEST, json.dumps({"files": file_sizes(path)}, indent=0))


def check_manifest(generation: int, path: Path, meta: Mapping[str, Any]) -> None:
    """Refuse a generation whose files are not all there at their published sizes (`meta`:
    its metadata, which says whether it was published with a manifest)."""
    try:
        listed: dict[str, int] = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        if not meta.get(MANIFEST_FLAG):
            return  # published before manifests
        raise IndexError_(
            f"index generation {generation} is incomplete: its {MANIFEST} is missing; complete "
            f"the copy, or rebuild the index with `semflow sync --full-refresh` ({path})"
        ) from None
    except (ValueError, KeyError, TypeError) as err:
        raise IndexError_(
            f"index generation {generation}: {path / MANIFEST} is corrupt ({err})"
        ) from err
    missing, resized = [], []
    for rel, size in listed.items():
        try:
            if os.stat(path / rel).st_size != size and not fnmatch.fnmatch(rel, _REWRITTEN):
                resized.append(rel)
        except FileNotFoundError:
            missing.append(rel)
    if missing or resized:
        wrong = [f"{len(missing)} missing"] if missing else []
        wrong += [f"{len(resized)} of another size"] if resized else []
        raise IndexError_(
            f"index generation {generation} is incomplete ({' and '.join(wrong)} of its "
            f"{len(listed)} files, first {(missing + resized)[0]}): it was not opened and "
            "nothing in it changed; complete the copy, or rebuild the index with `semflow sync "
            f"--full-refresh` ({path})"
        )
