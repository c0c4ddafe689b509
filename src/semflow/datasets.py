"""Datasets in object storage: review candidates, verified labels, monthly training sets.

Layout (keys relative to the storage root, `<home>/datasets` or `s3://bucket/prefix`):

    candidates/YYYY-MM-DD/candidates.parquet + manifest.json   (daily, from the prediction log)
    verified/YYYY-MM-DD/verified.parquet                         (written by reviewers: text, label)
    full/YYYY-MM/train.parquet + manifest.json                   (monthly: gold + verified)

Every output is a pure function of its inputs, so re-running a day or a month rewrites the
same keys with the same content.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import logging
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from semflow.config import SAMPLE_DIR, Settings, get_settings
from semflow.errors import SemflowError, SettingsError

log = logging.getLogger("semflow.datasets")

LOW_CONFIDENCE = 0.5
CANDIDATE_COLUMNS = [
    "request_id",
    "time",
    "tenant",
    "text",
    "label",
    "score",
    "model_version",
    "low_confidence",
]
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=\-]*$")


class DatasetError(SemflowError):
    """A dataset name, key or storage location is invalid, or storage failed."""


# -- names and keys ------------------------------------------------------------------
def validate_key(key: str) -> str:
    """Check a storage key (`a/b/c.parquet`): relative, no `..`, no scheme, plain segments."""
    if not isinstance(key, str) or not key.strip():
        raise DatasetError("a dataset path must be a non-empty string")
    if "\\" in key or any(ord(c) < 32 for c in key):
        raise DatasetError(f"dataset path {key!r} contains a backslash or control character")
    if _SCHEME.match(key) or "://" in key:
        raise DatasetError(f"dataset path {key!r} must be relative to the storage root, not a URL")
    if key.startswith("/") or key.startswith("~"):
        raise DatasetError(f"dataset path {key!r} must be relative, not absolute")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise DatasetError(f"dataset path {key!r} may not contain empty, '.' or '..' parts")
        if not _SEGMENT.match(part):
            raise DatasetError(
                f"dataset path {key!r}: part {part!r} may only use letters, digits and _ . = -"
            )
    return key


def validate_name(name: str) -> str:
    """A dataset name is a key of one or more plain segments (e.g. `full/2026-05`)."""
    return validate_key(name)


def parse_day(day: date | datetime | str) -> date:
    if isinstance(day, datetime):
        return day.date()
    if isinstance(day, date):
        return day
    try:
        return date.fromisoformat(str(day))
    except ValueError:
        raise DatasetError(f"day must be YYYY-MM-DD, got {day!r}") from None


def parse_month(month: date | datetime | str) -> str:
    if isinstance(month, (date, datetime)):
        return f"{month.year:04d}-{month.month:02d}"
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", str(month)):
        raise DatasetError(f"month must be YYYY-MM, got {month!r}")
    return str(month)


# -- storage ---------------------------------------------------------------------------
class ObjectStorage(ABC):
    """Keys to bytes; a local folder or an S3 bucket prefix."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (sorted)."""

    @abstractmethod
    def uri(self, key: str = "") -> str: ...


class LocalStorage(ObjectStorage):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a file

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise DatasetError(f"{self.uri(key)} does not exist")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)


class S3Storage(ObjectStorage):
    """An S3 bucket prefix through boto3 (MinIO / moto via `endpoint_url`)."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.endpoint_url = endpoint_url
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket",):
                raise DatasetError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}; "
                    "create it (docker-compose's minio-init does) or fix SEMFLOW_STORAGE_URL"
                ) from None
            raise DatasetError(
                f"S3 {what} on {self.uri(kw.get('Key', ''))} failed: {err}"
            ) from None
        except BotoCoreError as err:
            raise DatasetError(
                f"S3 {what} failed: {err}; check SEMFLOW_S3_ENDPOINT_URL and credentials"
            ) from None

    def put(self, key: str, data: bytes) -> None:
        self._call("put", self.client.put_object, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise DatasetError(f"{self.uri(key)} does not exist") from None
            return self._call("get", self.client.get_object, Key=self._key(key))["Body"].read()
        return obj["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise DatasetError(f"S3 head on {self.uri(key)} failed: {err}") from None
        return True

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            full = self._key(prefix.rstrip("/")) + "/"
        else:
            full = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": full}
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list", self.client.list_objects_v2, **kw)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)

    def uri(self, key: str = "") -> str:
        path = "/".join(p for p in (self.prefix, key) if p)
        return f"s3://{self.bucket}/{path}"


def open_storage(settings: Settings | None = None) -> ObjectStorage:
    """The storage named by `SEMFLOW_STORAGE_URL` (default: `<home>/datasets`)."""
    s = settings or get_settings()
    url = s.storage_url
    if not url:
        return LocalStorage(s.home / "datasets")
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise SettingsError(f"SEMFLOW_STORAGE_URL: {bucket!r} is not a valid S3 bucket name")
        return S3Storage(bucket, prefix, endpoint_url=s.s3_endpoint_url)
    if url.startswith("file://"):
        return LocalStorage(url.removeprefix("file://"))
    if _SCHEME.match(url) and not re.match(r"^[A-Za-z]:[\\/]", url):
        raise SettingsError(
            f"SEMFLOW_STORAGE_URL: unsupported scheme in {url!r}; use a path or s3://bucket/prefix"
        )
    return LocalStorage(url)


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
    storage = storage or open_storage(s)
    d = parse_day(day)
    rows = [
        {
            "request_id": p.request_id,
            "time": p.time,
            "tenant": p.tenant,
            "text": p.text,
            "label": p.label,
            "score": float(p.score),
            "model_version": p.model_version,
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
        "model_versions": sorted(set(df["model_version"])),
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
    gold_path: Path | None = None,
    labels: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Merge gold data with every verified candidate up to the month's end into `full/YYYY-MM/`.

    Gold wins over a verified row with the same (normalised) text; among verified rows the
    latest day wins. Verified labels outside the known label set are dropped and counted.
    """
    import pandas as pd

    s = settings or get_settings()
    storage = storage or open_storage(s)
    m = parse_month(month)
    year, mon = (int(x) for x in m.split("-"))
    last_day = date(year, mon, calendar.monthrange(year, mon)[1])
    gold_file = Path(gold_path or SAMPLE_DIR / "train.csv")
    if not gold_file.is_file():
        raise DatasetError(f"gold data {gold_file} does not exist")
    gold_bytes = gold_file.read_bytes()
    gold = pd.read_csv(io.BytesIO(gold_bytes))
    if not {"text", "category"} <= set(gold.columns):
        raise DatasetError(f"gold data {gold_file} needs columns text,category")
    gold = pd.DataFrame({"text": gold["text"].astype(str), "label": gold["category"].astype(str)})
    gold["origin"] = "gold"
    known = set(labels) if labels is not None else _known_labels(gold)

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


def _known_labels(gold: Any) -> set[str]:
    cats = SAMPLE_DIR / "categories.json"
    if cats.exists():
        return set(json.loads(cats.read_text())) | set(gold["label"])
    return set(gold["label"])


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
    storage = storage or open_storage(s)
    m = parse_month(month)
    keys = storage.list(f"full/{m}")
    if not keys:
        raise DatasetError(f"no dataset at {storage.uri(f'full/{m}')}; run build_dataset first")
    dest.mkdir(parents=True, exist_ok=True)
    for key in keys:
        (dest / key.rsplit("/", 1)[1]).write_bytes(storage.get(key))
    return dest
