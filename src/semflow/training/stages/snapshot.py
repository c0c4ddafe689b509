"""Stage `snapshot`: export the labelled documents of the live index to a CSV."""

from __future__ import annotations

from typing import Any

import pandas as pd

from semflow.config import Settings
from semflow.errors import SemflowError
from semflow.training.common import COLUMNS, Paths, log, sample_frame, write_json
from semflow.training.params import PipelineParams


def _check_tenant(df: pd.DataFrame, tenant: str) -> None:
    """Stop when the index holds documents but none labelled for `tenant`, naming the tenants
    it does hold: an exported empty CSV would only fail later, in `validate`, without the why.
    (An empty index still exports an empty CSV; validate's row count check reports it.)"""
    labelled = df["label"].notna()
    if (labelled & (df["tenant"] == tenant)).any():
        return
    held = df.assign(labelled=labelled).groupby("tenant", dropna=False)["labelled"]
    summary = held.agg(["sum", "size"]).sort_values(["sum", "size"], ascending=False)
    counts = ", ".join(
        f"{t!r} ({int(row['sum'])} labelled of {int(row['size'])})" for t, row in summary.iterrows()
    )
    raise SemflowError(
        f"the index holds no labelled documents for tenant {tenant!r} (params.yaml "
        f"base.tenant); the tenants it holds: {counts}. Set base.tenant to one of them, or "
        "give the source a `tenant:` in sources.yaml (and a labels column in its mapping) "
        "and sync again"
    )


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
        for _, p in index.iter_payloads(fields=[*params.snapshot.fields, "chunk_no"]):
            if p.get("chunk_no"):
                continue  # a long document is one row: its first chunk, what a model reads
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
    if len(df):
        _check_tenant(df, params.base.tenant)
    df = df[df["tenant"] == params.base.tenant] if len(df) else df
    df = sample_frame(df, params.base, params.base.subset) if len(df) else df
    paths.snapshot.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths.snapshot, index=False)
    info = {"rows": len(df), "labels": int(df["label"].nunique()) if len(df) else 0}
    write_json(paths.metrics / "snapshot.json", info)
    return info
