"""What the system is doing, at a glance: what `semflow status` prints.

Each part is read on its own and a part that cannot be read says why instead of failing the
rest: an operator runs this exactly when something is down.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from semflow.app import Services
from semflow.config import mask_text
from semflow.index.base import check_point_count

log = logging.getLogger("semflow.status")


def _part(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"ok": True, **read()}
    except Exception as err:  # any part may be down; say which and why, keep the rest
        return {"ok": False, "error": mask_text(f"{type(err).__name__}: {err}")[:300]}


def index_status(svc: Services) -> dict[str, Any]:
    """Live generation, its embedder and points per tenant."""
    store = svc.store
    live = store.live_generation()
    out: dict[str, Any] = {
        "backend": svc.settings.index_backend,
        "live_generation": live,
        "generations": store.generations(),
        "embedder_version": None,
        "sparse": None,
        "points": 0,
        "points_per_tenant": {},
    }
    if live is not None:
        with store.open_live() as idx:
            tenants = Counter(p.get("tenant") for _, p in idx.iter_payloads(fields=("tenant",)))
            check_point_count(live, sum(tenants.values()), idx.published_points)
            out.update(
                embedder_version=idx.embedder_version,
                sparse=_describe_sparse(idx),
                points=sum(tenants.values()),
                points_per_tenant=dict(sorted(tenants.items(), key=lambda kv: str(kv[0]))),
            )
    return out


def _describe_sparse(idx: Any) -> str:
    """The live generation's sparse vectors in a sentence, with what an old layout needs."""
    refresh = (
        "until `semflow index rebuild` (from its own vectors, no model) or a full refresh "
        "(`semflow sync --full-refresh`)"
    )
    if not idx.has_sparse:
        return f"none: dense search only {refresh}"
    if idx.tenant_spaces is None:
        layout = "one BM25 term space shared by all tenants: their statistics mix"
    else:
        layout = f"a BM25 term space per tenant ({len(idx.tenant_spaces)} in use)"
    if idx.keeps_stopwords:
        layout += "; stop words kept: slower sparse searches"
    return f"{layout} {refresh}" if idx.tenant_spaces is None or idx.keeps_stopwords else layout


def catalog_status(svc: Services, runs: int = 5) -> dict[str, Any]:
    """Documents per status, dead letters per source, the last sync runs with their counts."""
    from semflow.sync import MAX_ATTEMPTS

    cat = svc.catalog
    recent = [
        {k: r[k] for k in ("id", "source", "mode", "status", "generation", "counts", "error")}
        | {"started_at": r["started_at"], "finished_at": r["finished_at"]}
        for r in cat.recent_runs(runs)
    ]
    return {
        "documents": cat.status_counts(),
        "dead_letters": cat.dead_letter_counts(MAX_ATTEMPTS),
        "recent_runs": recent,
    }


def models_status(svc: Services) -> dict[str, Any]:
    """Champion and challenger of the registered model, with their metrics."""
    from semflow import registry

    s = svc.settings
    out: dict[str, Any] = {"registered_model": s.registered_model}
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        version = registry.alias_version(s.tracking_uri, s.registered_model, alias)
        out[alias] = (
            None
            if version is None
            else {
                "version": version,
                "metrics": registry.version_metrics(s.tracking_uri, s.registered_model, version),
            }
        )
    return out


def service_status(url: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """Whether a service answers at `url` (its open /health page)."""
    import httpx

    r = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return {"url": url, "http_status": r.status_code, "status": body.get("status")}


def collect_status(
    svc: Services | None = None, service_url: str | None = None, runs: int = 5
) -> dict[str, Any]:
    """Every part of `semflow status`; a part that failed has `ok: false` and an `error`."""
    svc = svc or Services.from_settings()
    out = {
        "index": _part(lambda: index_status(svc)),
        "catalog": _part(lambda: catalog_status(svc, runs)),
        "models": _part(lambda: models_status(svc)),
    }
    if service_url:
        out["service"] = _part(lambda: service_status(service_url))
    return out
