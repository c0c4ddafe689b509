"""The promotion gate and the aliases: `champion` for a version that passed, `challenger` for
one that did not, rollback to an earlier version, and the listing an operator reads."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semflow.config import get_settings
from semflow.registry.tracking import RegistryError, _is_missing, client, wait_ready

# One logger for the whole registry package (what logging configs and operators filter on).
log = logging.getLogger("semflow.registry")

CHAMPION = "champion"
CHALLENGER = "challenger"


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version `name@alias` points at; None when the model or the alias does not exist.

    Read from the registered model's aliases: MLflow answers a missing alias with the same
    code as a malformed request (INVALID_PARAMETER_VALUE), so asking for it directly cannot
    tell "no champion yet" from a real error. Any other failure is a RegistryError.
    """
    try:
        aliases = client(tracking_uri).get_registered_model(name).aliases or {}
    except Exception as err:
        if _is_missing(err):
            return None
        raise RegistryError(f"could not read {name}@{alias} from {tracking_uri}: {err}") from None
    version = aliases.get(alias)
    return None if version is None else str(version)


@dataclass
class GateResult:
    version: str
    promoted: bool
    alias: str
    reasons: list[str] = field(default_factory=list)
    previous_champion: str | None = None
    embedder_changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_tag(metric: str) -> str:
    """The model-version tag that stores `metric` (artifacts.log_bundle writes it)."""
    # MLflow tag keys may not contain "@" (as in "ndcg@10").
    return "metric." + metric.replace("@", "_at_")


def version_metrics(tracking_uri: str, name: str, version: str) -> dict[str, float]:
    """Metrics stored as tags on a model version (names as the pipeline writes them)."""
    mv = client(tracking_uri).get_model_version(name, version)
    return {
        k[len("metric.") :].replace("_at_", "@"): float(v)
        for k, v in mv.tags.items()
        if k.startswith("metric.")
    }


def check_gate(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    floors: Mapping[str, float],
    tolerance: float,
    compare: list[str],
) -> list[str]:
    """Reasons the candidate fails (empty list: it passes)."""
    reasons = []
    for metric, floor in floors.items():
        value = candidate.get(metric)
        if value is None:
            reasons.append(f"{metric} is missing from the candidate's metrics")
        elif value < float(floor):
            reasons.append(f"{metric} {value:.4f} is below the floor {float(floor):.4f}")
    if champion:
        for metric in compare:
            if metric in champion and metric not in candidate:
                # e.g. a model whose unknown detection is no longer measured
                reasons.append(f"{metric} is missing from the candidate's metrics")
            elif (
                metric in champion
                and metric in candidate
                and candidate[metric] < champion[metric] - tolerance
            ):
                reasons.append(
                    f"{metric} {candidate[metric]:.4f} regresses more than {tolerance} "
                    f"against the champion's {champion[metric]:.4f}"
                )
    return reasons


@contextlib.contextmanager
def _promotion_lock(tracking_uri: str, name: str) -> Iterator[None]:
    """Serialise promoters on this host (file lock beside the sqlite DB, else under home).

    The alias write itself is atomic in MLflow; the lock makes read-champion -> compare ->
    set-alias one step, so a weaker racer cannot overwrite a stronger one it never saw.
    """
    if tracking_uri.startswith("sqlite:///"):
        base = Path(tracking_uri[len("sqlite:///") :]).parent
    else:
        base = get_settings().home
    base.mkdir(parents=True, exist_ok=True)
    with (base / f".promote-{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def promote(
    tracking_uri: str,
    version: str,
    *,
    floors: Mapping[str, float],
    tolerance: float,
    compare: list[str],
    name: str,
    run_id: str | None = None,
    forced: Mapping[str, str] | None = None,
) -> GateResult:
    """Gate `version`: champion if it passes, else challenger; the reason is logged. `forced`
    (by, reason, changes) records that an operator weakened this gate: tags `gate.forced*`."""
    c = client(tracking_uri)
    wait_ready(tracking_uri, name, version)
    cand = version_metrics(tracking_uri, name, version)
    with _promotion_lock(tracking_uri, name):
        # No champion yet is normal; a registry that cannot be read stops the promotion.
        prev = alias_version(tracking_uri, name, CHAMPION)
        if prev == str(version):
            return GateResult(version, True, CHAMPION, ["already champion"], prev)
        champ = version_metrics(tracking_uri, name, prev) if prev else None
        reasons = check_gate(cand, champ, floors, tolerance, compare)
        promoted = not reasons
        alias = CHAMPION if promoted else CHALLENGER
        c.set_registered_model_alias(name, alias, str(version))
        summary = "passed the gate" if promoted else "; ".join(reasons)
        c.set_model_version_tag(
            name, str(version), "gate.result", "promoted" if promoted else "rejected"
        )
        c.set_model_version_tag(name, str(version), "gate.reason", summary[:4000])
        if forced:
            c.set_model_version_tag(name, str(version), "gate.forced", "true")
            for key, value in forced.items():
                c.set_model_version_tag(name, str(version), f"gate.forced_{key}", value[:4000])
        changed = False
        if promoted and prev:
            old = c.get_model_version(name, prev).tags.get("embedder_version")
            new = c.get_model_version(name, str(version)).tags.get("embedder_version")
            changed = old != new
    if run_id:
        c.set_tag(run_id, "gate.result", "promoted" if promoted else "rejected")
        c.set_tag(run_id, "gate.reason", summary[:4000])
        if forced:
            c.set_tag(run_id, "gate.forced", "true")
    if forced:
        log.warning(
            "model %s v%s was gated with a weakened gate, forced by %s (%s): %s",
            name,
            version,
            forced.get("by"),
            forced.get("reason"),
            forced.get("changes"),
        )
    log.info("model %s v%s: %s (%s)", name, version, alias, summary)
    return GateResult(str(version), promoted, alias, reasons, prev, changed)


def list_versions(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """Every version of `name`, newest first, with its aliases, status and gate result."""
    c = client(tracking_uri)
    try:
        aliases = c.get_registered_model(name).aliases or {}
    except Exception as err:
        if _is_missing(err):
            return []
        raise RegistryError(f"could not read model {name} from {tracking_uri}: {err}") from None
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    out = [
        {
            "version": str(mv.version),
            "status": mv.status,
            "aliases": sorted(by_version.get(str(mv.version), [])),
            "gate": mv.tags.get("gate.result"),
            "reason": mv.tags.get("gate.reason"),
            "embedder_version": mv.tags.get("embedder_version"),
            "run_id": mv.run_id,
        }
        for mv in c.search_model_versions(f"name='{name}'")
    ]
    return sorted(out, key=lambda d: -int(d["version"]))


def check_ready(tracking_uri: str, version: str, name: str) -> None:
    """Raise RegistryError unless `name` has a READY version `version`."""
    try:
        mv = client(tracking_uri).get_model_version(name, str(version))
    except Exception as err:
        if _is_missing(err):
            raise RegistryError(f"model {name} has no version {version}") from None
        raise RegistryError(f"could not read {name} v{version}: {err}") from None
    if mv.status != "READY":
        raise RegistryError(f"model {name} v{version} is {mv.status}, not READY")


def rollback(tracking_uri: str, version: str, name: str) -> dict[str, Any]:
    """Point `champion` at an earlier READY version (no gate: an operator's decision)."""
    check_ready(tracking_uri, version, name)
    c = client(tracking_uri)
    with _promotion_lock(tracking_uri, name):
        # Same policy as promote: no champion yet is None, an unreadable registry an error
        # (guessing None here would record "rolled back from vNone" and hide the real one).
        prev = alias_version(tracking_uri, name, CHAMPION)
        c.set_registered_model_alias(name, CHAMPION, str(version))
        c.set_model_version_tag(name, str(version), "gate.reason", f"rolled back from v{prev}")
    log.info("model %s: champion v%s -> v%s (rollback)", name, prev, version)
    return {"champion": str(version), "previous_champion": prev}
