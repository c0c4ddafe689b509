"""`semflow` command line: the same library functions the DAGs call.

Errors print one sentence on stderr and exit 2 (bad input/settings) or 1 (a failed run).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from semflow.errors import SemflowError, SettingsError

app = typer.Typer(
    help="semflow: sync application text into a vector index, search it, train and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Inspect and maintain the vector index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
model_app = typer.Typer(help="The MLflow registered model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
keys_app = typer.Typer(help="Serving API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _echo(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _when(value: str | None, name: str) -> datetime | None:
    from semflow.documents import to_utc

    if value is None:
        return None
    try:
        return to_utc(value)
    except ValueError:
        raise SettingsError(f"{name} must be an ISO 8601 timestamp, got {value!r}") from None


@app.command()
def sync(
    source: Annotated[str, typer.Option(help="Source name from sources.yaml.")] = "banking77",
    since: Annotated[str | None, typer.Option(help="Window start (ISO 8601, inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="Window end (ISO 8601, exclusive).")] = None,
    full_refresh: Annotated[bool, typer.Option(help="Rebuild a fresh generation.")] = False,
    reconcile: Annotated[bool, typer.Option(help="Remove points whose rows are gone.")] = False,
) -> None:
    """Sync a source into the index (changed documents only)."""
    from semflow.sources.spec import build_source, get_spec
    from semflow.sync import run_sync

    window = (_when(since, "--since"), _when(until, "--until"))
    src = build_source(get_spec(source))
    result = run_sync(src, window=window, full_refresh=full_refresh, reconcile=reconcile)
    _echo(result.to_dict())


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Text to search for.")],
    tenant: Annotated[str, typer.Option(help="Tenant to search in.")] = "bank",
    top_k: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="field=value, e.g. type=support_query")
    ] = None,
    score_threshold: Annotated[float | None, typer.Option()] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="dense, sparse or hybrid; default: the search_mode setting."),
    ] = None,
) -> None:
    """Search the live index generation."""
    from semflow.app import Services
    from semflow.embedding import check_embedder
    from semflow.index.base import SEARCH_MODES

    if not query.strip():
        raise SettingsError("the query is empty")
    if mode is not None and mode not in SEARCH_MODES:
        raise SettingsError(f"--mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    filters: dict[str, Any] = {}
    for f in filter_ or []:
        key, sep, value = f.partition("=")
        if not sep or not key:
            raise SettingsError(f"--filter must look like field=value, got {f!r}")
        filters.setdefault(key, []).append(value)
    svc = Services.from_settings()
    with svc.store.open_live() as idx:
        mode = idx.search_mode(mode, svc.settings.search_mode, score_threshold)
        vector = None
        if mode != "sparse":
            embedder = svc.embedder(idx.embedder_version)
            check_embedder(embedder.version, idx.embedder_version, "the live index was built with")
            vector = embedder.encode([query])[0]
        hits = idx.search(vector, tenant, top_k, filters, score_threshold, mode=mode, text=query)
        _echo(
            {
                "generation": idx.generation,
                "embedder_version": idx.embedder_version,
                "mode": mode,
                "results": [
                    {
                        "id": h.id,
                        "score": round(h.score, 4),
                        "doc_id": h.payload.get("doc_id"),
                        "text": h.payload.get("text"),
                        "labels": h.payload.get("labels"),
                    }
                    for h in hits
                ],
            }
        )


@index_app.command("status")
def index_status() -> None:
    """Live generation, generations on disk, points and model version."""
    from semflow.app import Services

    svc = Services.from_settings()
    store = svc.store
    out: dict[str, Any] = {
        "backend": svc.settings.index_backend,
        "live_generation": store.live_generation(),
        "generations": store.generations(),
    }
    if out["live_generation"] is not None:
        with store.open_live() as idx:
            out.update(points=idx.count(), embedder_version=idx.embedder_version)
    out["catalog"] = svc.catalog.status_counts()
    _echo(out)


@index_app.command("prune")
def index_prune(keep: Annotated[int, typer.Option(min=1)] = 3) -> None:
    """Drop all but the newest KEEP generations (never the live one)."""
    from semflow.app import Services

    _echo({"dropped": Services.from_settings().store.prune(keep)})


@index_app.command("rebuild")
def index_rebuild(
    if_outdated: Annotated[
        bool,
        typer.Option(
            "--if-outdated", help="Only when the live layout is older than this release's."
        ),
    ] = False,
) -> None:
    """Rewrite the live generation in this release's layout (sparse vectors, a term space per
    tenant, sealed segments) from its own stored vectors and texts: no model, no source."""
    from dataclasses import asdict

    from semflow.app import Services
    from semflow.maintenance import rebuild_index, upgrade_index_layout

    svc = Services.from_settings()
    if if_outdated:
        _echo(upgrade_index_layout(svc.store, svc.catalog).to_dict())
    else:
        _echo(asdict(rebuild_index(svc.store, svc.catalog)))


@model_app.command("list")
def model_list() -> None:
    """Registered versions, newest first, with aliases and gate results."""
    from semflow import registry
    from semflow.config import get_settings

    s = get_settings()
    _echo(registry.list_versions(s.tracking_uri, s.registered_model))


@model_app.command("rollback")
def model_rollback(
    to: Annotated[str, typer.Option("--to", help="The version to make champion.")],
    no_reindex: Annotated[
        bool, typer.Option("--no-reindex", help="Move only the alias; leave the index as it is.")
    ] = False,
) -> None:
    """Move the champion alias to an earlier READY version, first rebuilding the index with
    that version's embedder when the live index was built with another one."""
    if not to.isdigit():
        raise SettingsError(f"--to must be a version number, got {to!r}")
    from semflow.training.reindex import rollback_champion

    _echo(rollback_champion(to, reindex=not no_reindex))


@model_app.command("reproduce")
def model_reproduce(
    version: Annotated[str, typer.Argument(help="The registered version to reproduce.")],
    tolerance: Annotated[float, typer.Option(min=0.0, help="Largest metric difference.")] = 0.005,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the scratch workspace here (default: a temp dir).")
    ] = None,
) -> None:
    """Fetch a version's data (DVC remote) and params (MLflow), run validate..evaluate again
    in a scratch workspace and compare the metrics; exit 1 when one is off by > TOLERANCE."""
    if not version.isdigit():
        raise SettingsError(f"VERSION must be a version number, got {version!r}")
    from semflow.training.reproduce import reproduce

    out = reproduce(version, tolerance=tolerance, workdir=workdir)
    _echo(out)
    if not out["reproduced"]:
        raise typer.Exit(1)


@keys_app.command("new")
def keys_new(
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="Scope the key to these tenants.")
    ] = None,
) -> None:
    """Print a new API key and the SEMFLOW_API_KEYS entry (its hash) that accepts it."""
    import re
    import secrets

    from semflow.serving.auth import hash_key

    for t in tenant or []:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", t):
            raise SettingsError(f"--tenant {t!r}: use letters, digits, '_', '.', '-'")
    key = "sf_" + secrets.token_urlsafe(32)
    entry = hash_key(key) + (":" + "|".join(tenant) if tenant else "")
    _echo({"key": key, "entry": entry, "note": "store the key now; only the entry is kept"})


@app.command()
def status(
    json_: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
    service_url: Annotated[
        str, typer.Option(help="Where a local service would answer ('' to skip).")
    ] = "http://127.0.0.1:3000",
    runs: Annotated[int, typer.Option(min=1, max=100, help="Sync runs to show.")] = 5,
) -> None:
    """The index, the catalog, the registered models and the service, at a glance. A part
    that cannot be read says why; the rest is still shown. Exit 1 if any part failed."""
    from semflow.status import collect_status

    out = collect_status(service_url=service_url or None, runs=runs)
    if json_:
        _echo(out)
    else:
        _print_status(out)
    if not all(part["ok"] for part in out.values()):
        raise typer.Exit(1)


def _print_status(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def table(title: str, rows: list[tuple[Any, ...]], *cols: str) -> None:
        t = Table(title=title, title_justify="left")
        for c in cols:
            t.add_column(c)
        for r in rows:
            t.add_row(*("-" if v is None else str(v) for v in r))
        console.print(t)

    def down(name: str, part: dict[str, Any]) -> bool:
        if not part["ok"]:
            console.print(f"[bold red]{name}: unavailable[/] ({part['error']})")
        return not part["ok"]

    idx = out["index"]
    if not down("index", idx):
        table(
            "Index",
            [
                ("backend", idx["backend"]),
                ("live generation", idx["live_generation"]),
                ("generations", ", ".join(map(str, idx["generations"])) or None),
                ("embedder", idx["embedder_version"]),
                ("sparse vectors", idx["sparse"]),
                ("points", idx["points"]),
            ],
            "",
            "",
        )
        table("Points per tenant", list(idx["points_per_tenant"].items()), "tenant", "points")
    cat = out["catalog"]
    if not down("catalog", cat):
        table("Documents", list(cat["documents"].items()), "status", "documents")
        table("Dead letters", list(cat["dead_letters"].items()), "source", "retryable")
        table(
            "Recent syncs",
            [
                (
                    r["id"],
                    r["source"],
                    r["mode"],
                    r["status"],
                    r["generation"],
                    " ".join(f"{k}={v}" for k, v in r["counts"].items() if v) or None,
                    r["finished_at"],
                )
                for r in cat["recent_runs"]
            ],
            "run",
            "source",
            "mode",
            "status",
            "generation",
            "counts",
            "finished",
        )
    models = out["models"]
    if not down("models", models):
        rows = []
        for alias in ("champion", "challenger"):
            v = models.get(alias)
            metrics = " ".join(
                f"{k}={x:.4f}" for k, x in sorted((v or {}).get("metrics", {}).items())
            )
            rows.append((alias, v and v["version"], metrics or None))
        table(f"Model {models['registered_model']}", rows, "alias", "version", "metrics")
    if "service" in out:
        svc = out["service"]
        if not down("service", svc):
            console.print(f"service at {svc['url']}: HTTP {svc['http_status']}, {svc['status']}")


@app.command()
def settings() -> None:
    """Print the validated settings (secrets and the passwords inside URLs masked)."""
    from semflow.config import get_settings, masked_settings

    _echo(masked_settings(get_settings()))


def main(argv: list[str] | None = None) -> None:
    """Entry point: a SemflowError becomes one sentence and an exit code, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Without standalone mode click returns a command's typer.Exit code instead of raising.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except SettingsError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except SemflowError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:
        # Usage errors. Recent typer vendors click (typer._click), so they are not instances of
        # click.ClickException: recognise the interface instead of the class.
        code = getattr(err, "exit_code", None)
        if callable(getattr(err, "show", None)) and isinstance(code, int):
            err.show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
