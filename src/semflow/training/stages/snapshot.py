"""Stage `snapshot`: export the labelled documents of the live index to a CSV."""

from __future__ import annotations

from typing import Any

import pandas as pd

from semflow.config import Settings
from semflow.errors import SemflowError
from semflow.training.common import COLUMNS, Paths, log, sample_frame, write_json
from semflow.training.params import PipelineParams


def snapshot(
    paths: Paths,
    params: PipelineParams,
    settings: Settings | None = None,
    source: Any | None = None,
) -> dict[str, Any]:
    """Export labelled documents from the live index; sync the sample first on a fresh clone."""
    from semflow.app import Services

    svc = Services.from_settings(settings)
    store = svc.store
    if store.live_generation() is None:
        if not params.snapshot.sync_if_empty:
            raise SemflowError("the index has no live generation; run a sync first")
        from semflow.sample import banking77_source
        from semflow.sync import run_sync

        log.info("no index yet: syncing the sample first")
        run_sync(source or banking77_source("train", tenant=params.base.tenant), svc)
    rows = []
    with store.open_live() as index:
        for _, p in index.iter_payloads(fields=params.snapshot.fields):
            labels = p.get("labels") or []
            rows.append(
                {
                    "doc_id": p.get("doc_id"),
                    "text": p.get("text"),
                    "label": labels[0] if labels else None,
                    "tenant": p.get("tenant"),
                    "type": p.get("type"),
                }
            )
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df[df["tenant"] == params.base.tenant] if len(df) else df
    df = sample_frame(df, params.base, params.base.subset) if len(df) else df
    paths.snapshot.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths.snapshot, index=False)
    info = {"rows": len(df), "labels": int(df["label"].nunique()) if len(df) else 0}
    write_json(paths.metrics / "snapshot.json", info)
    return info
