"""Datasets in object storage: review candidates, verified labels, monthly training sets.

Layout (keys relative to the storage root, `<home>/datasets` or `s3://bucket/prefix`):

    candidates/YYYY-MM-DD/candidates.parquet + manifest.json   (daily, from the prediction log)
    verified/YYYY-MM-DD/verified.parquet                         (written by reviewers: text, label)
    full/YYYY-MM/train.parquet + manifest.json                   (monthly: gold + verified)

Every output is a pure function of its inputs, so re-running a day or a month rewrites the
same keys with the same content. The gold data and the label set are params.yaml's
`validate.reference` and `validate.allowed_labels`, the files the pipeline validates against.
Storage itself (keys, local folder, S3) is `semflow.storage`.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from semflow.app import Services
from semflow.config import Settings, get_settings
from semflow.errors import SemflowError
from semflow.storage import ObjectStorage

if TYPE_CHECKING:
    from semflow.training.params import PipelineParams

log = logging.getLogger("semflow.datasets")

LOW_CONFIDENCE = 0.5
CANDIDATE_COLUMNS = [
    "request_id",
    "time",
    "tenant",
    "text",
    "label",
    "score",
    "model",
    "low_confidence",
]


class DatasetError(SemflowError):
    """A day, month or dataset is invalid or missing, or gold data is unusable."""


# -- names -----------------------------------------------------------------------------
def parse_day(day: date | datetime | str) -> date:
    """A day as a date, from a date, a datetime or `YYYY-MM-DD`."""
    if isinstance(day, datetime):
        return day.date()
    if isinstance(day, date):
        return day
    try:
        return date.fromisoformat(str(day))
    except ValueError:
        raise DatasetError(f"day must be YYYY-MM-DD, got {day!r}") from None


def parse_month(month: date | datetime | str) -> str:
    """A month as `YYYY-MM`, from a date, a datetime or that string."""
    if isinstance(month, (date, datetime)):
        return f"{month.year:04d}-{month.month:02d}"
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", str(month)):
        raise DatasetError(f"month must be YYYY-MM, got {month!r}")
    return str(month)


# -- helpers -------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet_bytes(df: Any) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _read_parquet(data: bytes) -> Any:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


# -- daily: candidates -------------------------------------------------------------------
def collect_candidates(
    day: date | datetime | str,
    *,
    settings: Settings | None = None,
    storage: ObjectStorage | None = None,
    low_confidence: float = LOW_CONFIDENCE,
) -> dict[str, Any]:
    """Turn one UTC day of the prediction log into `candidates/YYYY-MM-DD/`; returns the manifest.

    Predictions with `score < low_confidence` are flagged for review first. A day without
    predictions still gets an (empty) Parquet file and manifest, so "no traffic" is visible.
    """
    import pandas as pd

    from semflow.predictions import day_file, read_day

    if not 0.0 <= low_confidence <= 1.0:
        raise DatasetError(f"low_confidence must be within [0, 1], got {low_confidence}")
    s = settings or get_settings()
    storage = storage or Services.from_settings(s).storage
    d = parse_day(day)
    rows = [
        {
            "request_id": p.request_id,
            "time": p.time,
            "tenant": p.tenant,
            "text": p.text,
            "label": p.label,
            "score": float(p.score),
            "model": p.model,
            "low_confidence": float(p.score) < low_confidence,
        }
        for p in read_day(s.home, d)
    ]
    df = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS).astype(
        {"score": "float64", "low_confidence": "bool"}
    )
    # Sorted, so the same log gives byte-identical output on a re-run.
    df = df.sort_values(["time", "request_id", "text"], kind="stable").reset_index(drop=True)
    data = _parquet_bytes(df)
    prefix = f"candidates/{d.isoformat()}"
    log_path = day_file(s.home, d)
    low = df[df["low_confidence"]]
    manifest = {
        "kind": "candidates",
        "day": d.isoformat(),
        "rows": len(df),
        "low_confidence_threshold": low_confidence,
        "low_confidence": len(low),
        "counts_per_label": dict(sorted(Counter(df["label"]).items())),
        "low_confidence_per_label": dict(sorted(Counter(low["label"]).items())),
        "models": sorted(set(df["model"])),
        "files": {"candidates.parquet": {"sha256": _sha256(data), "rows": len(df)}},
        "source": {
            "prediction_log": log_path.name,
            "sha256": _sha256(log_path.read_bytes()) if log_path.exists() else None,
        },
    }
    storage.put(f"{prefix}/candidates.parquet", data)
    storage.put(f"{prefix}/manifest.json", _json_bytes(manifest))
    log.info(
        "collected candidates",
        extra={"day": d.isoformat(), "rows": len(df), "uri": storage.uri(prefix)},
    )
    return manifest


# -- monthly: full dataset -----------------------------------------------------------------
def _verified_days(storage: ObjectStorage, last_day: date) -> list[tuple[str, str]]:
    """(day, key) of every verified file up to `last_day`, oldest first."""
    out = []
    for key in storage.list("verified"):
        parts = key.split("/")
        if len(parts) != 3 or not parts[2].endswith(".parquet"):
            continue
        try:
            d = date.fromisoformat(parts[1])
        except ValueError:
            log.warning("ignoring %s: not under verified/YYYY-MM-DD/", key)
            continue
        if d <= last_day:
            out.append((d.isoformat(), key))
    return sorted(out)


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def build_dataset(
    month: date | datetime | str,
    *,
    settings: Settings | None = None,
    storage: ObjectStorage | None = None,
    params: PipelineParams | None = None,
    gold_path: Path | None = None,
    labels: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Merge gold data with every verified candidate up to the month's end into `full/YYYY-MM/`.

    Gold wins over a verified row with the same (normalised) text; among verified rows the
    latest day wins. Verified labels outside the known label set are dropped and counted.
    The gold file and the label set come from `params` (params.yaml unless given):
    `validate.reference` and `validate.allowed_labels`; `gold_path` and `labels` override them.
    """
    import pandas as pd

    s = settings or get_settings()
    storage = storage or Services.from_settings(s).storage
    m = parse_month(month)
    year, mon = (int(x) for x in m.split("-"))
    last_day = date(year, mon, calendar.monthrange(year, mon)[1])
    gold_file, labels_file = _gold_files(s, params, gold_path, labels)
    if not gold_file.is_file():
        raise DatasetError(f"gold data {gold_file} does not exist")
    gold_bytes = gold_file.read_bytes()
    gold = pd.read_csv(io.BytesIO(gold_bytes))
    if not {"text", "category"} <= set(gold.columns):
        raise DatasetError(f"gold data {gold_file} needs columns text,category")
    gold = pd.DataFrame({"text": gold["text"].astype(str), "label": gold["category"].astype(str)})
    gold["origin"] = "gold"
    known = set(labels) if labels is not None else _known_labels(gold, labels_file)

    verified_frames = []
    sources = []
    for day, key in _verified_days(storage, last_day):
        data = storage.get(key)
        df = _read_parquet(data)
        if not {"text", "label"} <= set(df.columns):
            raise DatasetError(f"{storage.uri(key)} needs columns text,label")
        sources.append({"key": key, "sha256": _sha256(data), "rows": len(df)})
        verified_frames.append(
            pd.DataFrame(
                {"text": df["text"].astype(str), "label": df["label"].astype(str), "day": day}
            )
        )
    verified = (
        pd.concat(verified_frames, ignore_index=True)
        if verified_frames
        else pd.DataFrame(columns=["text", "label", "day"])
    )
    unknown = verified[~verified["label"].isin(known)]
    verified = verified[verified["label"].isin(known)]
    verified = verified.assign(_n=verified["text"].map(_norm))
    verified = verified.drop_duplicates("_n", keep="last")  # latest review of a text wins
    gold_norm = set(gold["text"].map(_norm))
    dup_of_gold = verified["_n"].isin(gold_norm)
    added = verified[~dup_of_gold][["text", "label"]].assign(origin="verified")

    full = pd.concat([gold, added], ignore_index=True)
    full = full.sort_values(["origin", "label", "text"], kind="stable").reset_index(drop=True)
    data = _parquet_bytes(full)
    prefix = f"full/{m}"
    manifest = {
        "kind": "full",
        "month": m,
        "rows": len(full),
        "counts": {
            "gold": len(gold),
            "verified_added": len(added),
            "verified_duplicate_of_gold": int(dup_of_gold.sum()),
            "verified_unknown_label": len(unknown),
        },
        "counts_per_label": dict(sorted(Counter(full["label"]).items())),
        "files": {"train.parquet": {"sha256": _sha256(data), "rows": len(full)}},
        "sources": {
            "gold": {"path": _repo_relative(gold_file), "sha256": _sha256(gold_bytes)},
            "verified": sources,
        },
    }
    storage.put(f"{prefix}/train.parquet", data)
    storage.put(f"{prefix}/manifest.json", _json_bytes(manifest))
    log.info("built dataset", extra={"month": m, "rows": len(full), "uri": storage.uri(prefix)})
    return manifest


def _gold_files(
    settings: Settings,
    params: PipelineParams | None,
    gold_path: Path | None,
    labels: Iterable[str] | None,
) -> tuple[Path, Path | None]:
    """(gold csv, label set json or None): the arguments, else params' `validate` section."""
    if gold_path is not None and labels is not None:
        return Path(gold_path), None  # nothing left to look up: params.yaml is not read
    from semflow.training.common import Paths
    from semflow.training.params import load_pipeline_params

    section = (params or load_pipeline_params()).validate_
    # Resolved like the pipeline's validate stage does: relative paths are the repo's.
    paths = Paths.for_home(settings)
    gold_file = Path(gold_path) if gold_path is not None else paths.resolve(section.reference)
    if gold_file is None:
        raise DatasetError(
            "no gold data: params.yaml's validate.reference is null; set it or pass gold_path"
        )
    return gold_file, paths.resolve(section.allowed_labels)


def _known_labels(gold: Any, labels_file: Path | None) -> set[str]:
    """The label set file's labels (a list, or a mapping's keys) plus the gold labels."""
    if labels_file is None:
        return set(gold["label"])
    if not labels_file.is_file():
        raise DatasetError(f"label set {labels_file} (validate.allowed_labels) does not exist")
    return set(json.loads(labels_file.read_text())) | set(gold["label"])


def _repo_relative(path: Path) -> str:
    from semflow.config import REPO_ROOT

    try:
        return PurePosixPath(path.resolve().relative_to(REPO_ROOT)).as_posix()
    except ValueError:
        return path.name


def export_dataset(
    month: date | datetime | str,
    dest: Path,
    *,
    settings: Settings | None = None,
    storage: ObjectStorage | None = None,
) -> Path:
    """Copy `full/YYYY-MM/` to a local folder (e.g. one that `dvc add` tracks); returns it."""
    s = settings or get_settings()
    storage = storage or Services.from_settings(s).storage
    m = parse_month(month)
    keys = storage.list(f"full/{m}")
    if not keys:
        raise DatasetError(f"no dataset at {storage.uri(f'full/{m}')}; run build_dataset first")
    dest.mkdir(parents=True, exist_ok=True)
    for key in keys:
        (dest / key.rsplit("/", 1)[1]).write_bytes(storage.get(key))
    return dest
