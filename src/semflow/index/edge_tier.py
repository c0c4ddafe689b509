"""A writer's copy of a generation is opened on qdrant-edge's cold tier, published on the hot one.

Opening a shard pre-reads the vectors of its sealed segments and loads their HNSW graphs into
RAM: what a reader needs to search fast, and what a writer that adds 100 points to a copy of
a 1M-point generation does not (it appends to the appendable segment and flips deletion
flags; it reads a sealed segment's vectors only if the optimizer rebuilds that segment). At
1M points the vectors alone are 1.5 GB, read at every sync from disk where the page cache is
cold. (A sealed sparse index is not read at open on either tier: it is left as it is.)

The engine keeps the tier in the shard's `edge_config.json` and in each segment's
`segment.json`, not in the data files: a sealed segment's vector file and graph file are the
same bytes on both tiers (`InRamMmap` is `Mmap` read ahead; an HNSW graph in RAM is its file
read whole). So the writer switches its copy's JSON to the cold tier before it opens it
(`to_cold`), and back before it publishes (`to_hot`): readers open a published generation
exactly as before. Both config files are the copy's own (`clone_generation` copies them, it
never links them), and the engine's config-mismatch optimizer sees one tier throughout, so it
rebuilds nothing.

`tests/unit/test_edge_tier.py` checks that a copy opened this way leaves those files unread,
and that what it publishes is what a writer on the hot tier would have published.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_COLD = "cold"
# vector storages: the hot (read ahead) name and its cold twin, same files
_STORAGE_COLD = {"InRamMmap": "Mmap", "InRamChunkedMmap": "ChunkedMmap"}
_STORAGE_HOT = {cold: hot for hot, cold in _STORAGE_COLD.items()}


@dataclass(frozen=True)
class HotForm:
    """What `to_hot` puts back: the shard config as published, and the HNSW options its
    segments were built with (those a segment built on the cold tier gets instead)."""

    edge_config: str
    hnsw_options: dict[str, dict[str, Any]]


def _segment_configs(shard: Path) -> list[tuple[Path, dict[str, Any]]]:
    segments = shard / "segments"
    out = []
    for seg in sorted(segments.iterdir()) if segments.is_dir() else []:
        path = seg / "segment.json"
        if path.is_file():
            out.append((path, json.loads(path.read_text())))
    return out


def durable_write(path: Path, text: str) -> None:
    """Replace `path` with `text`: readers see the old file or the new one, and the new one
    survives a power cut once this returns."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, data: dict[str, Any]) -> None:
    durable_write(path, json.dumps(data))


def to_cold(shard: Path) -> HotForm | None:
    """Switch the unopened copy `shard` to the cold tier; returns what `to_hot` restores, or
    None (the copy left as it is) when it has no HNSW segment on the hot tier or a layout this
    module does not know."""
    try:
        config_text = (shard / "edge_config.json").read_text()
        plan = _cold_plan(json.loads(config_text), _segment_configs(shard))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # an engine layout this module was not written for: opened as it is
    if plan is None:
        return None
    config, segments, hnsw = plan
    for path, seg in segments:
        _replace(path, seg)
    _replace(shard / "edge_config.json", config)
    return HotForm(config_text, hnsw)


def _cold_plan(
    config: dict[str, Any], segments: list[tuple[Path, dict[str, Any]]]
) -> tuple[dict[str, Any], list[tuple[Path, dict[str, Any]]], dict[str, dict[str, Any]]] | None:
    """The cold twins of the shard config and of the segment configs (changed in place),
    and the hot HNSW options; None when there is nothing on the hot tier to switch."""
    hnsw: dict[str, dict[str, Any]] = {}
    for _, seg in segments:
        for name, vec in seg["config"].get("vector_data", {}).items():
            if vec["index"]["type"] == "hnsw":
                hnsw.setdefault(name, vec["index"]["options"])
    vectors = config["vectors"]
    if (
        not hnsw
        or set(hnsw) - set(vectors)
        or any(o.get("on_disk") or "memory" in o for o in hnsw.values())
        or any("memory" in v or v.get("on_disk") for v in vectors.values())
    ):
        return None
    for name, vec in vectors.items():
        vec["memory"] = _COLD
        if name in hnsw:
            vec["hnsw_config"] = _cold_options(hnsw[name])
    for _, seg in segments:
        for vec in seg["config"].get("vector_data", {}).values():
            vec["storage_type"] = _STORAGE_COLD.get(vec["storage_type"], vec["storage_type"])
            if vec["index"]["type"] == "hnsw":
                vec["index"]["options"] = _cold_options(vec["index"]["options"])
    return config, segments, hnsw


def _cold_options(options: dict[str, Any]) -> dict[str, Any]:
    cold = {k: v for k, v in options.items() if k != "on_disk"}
    cold["memory"] = _COLD
    return cold


def to_hot(shard: Path, hot: HotForm) -> None:
    """Switch the closed copy `shard` back to the tier it was cloned on, segments the
    optimizer built on the cold tier included."""
    for path, seg in _segment_configs(shard):
        for name, vec in seg["config"].get("vector_data", {}).items():
            vec["storage_type"] = _STORAGE_HOT.get(vec["storage_type"], vec["storage_type"])
            if vec["index"]["type"] == "hnsw" and name in hot.hnsw_options:
                vec["index"]["options"] = dict(hot.hnsw_options[name])
        _replace(path, seg)
    durable_write(shard / "edge_config.json", hot.edge_config)
