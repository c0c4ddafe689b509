"""Object storage: keys to bytes in a local folder or an S3 bucket prefix.

Keys are relative POSIX paths of plain segments (`candidates/2026-05-01/manifest.json`),
checked before any I/O, so no key can leave the storage root. `open_storage` picks the
backend from `SEMFLOW_STORAGE_URL`; `semflow.datasets` lays its files out on top of it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from semflow.config import Settings, get_settings
from semflow.errors import SemflowError, SettingsError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=\-]*$")


class StorageError(SemflowError):
    """A storage key or location is invalid, an object is missing, or storage failed."""


# -- keys ------------------------------------------------------------------------------
def validate_key(key: str) -> str:
    """Check a storage key (`a/b/c.parquet`): relative, no `..`, no scheme, plain segments."""
    if not isinstance(key, str) or not key.strip():
        raise StorageError("a dataset path must be a non-empty string")
    if "\\" in key or any(ord(c) < 32 for c in key):
        raise StorageError(f"dataset path {key!r} contains a backslash or control character")
    if _SCHEME.match(key) or "://" in key:
        raise StorageError(f"dataset path {key!r} must be relative to the storage root, not a URL")
    if key.startswith("/") or key.startswith("~"):
        raise StorageError(f"dataset path {key!r} must be relative, not absolute")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise StorageError(f"dataset path {key!r} may not contain empty, '.' or '..' parts")
        if not _SEGMENT.match(part):
            raise StorageError(
                f"dataset path {key!r}: part {part!r} may only use letters, digits and _ . = -"
            )
    return key


def validate_name(name: str) -> str:
    """A dataset name is a key of one or more plain segments (e.g. `full/2026-05`)."""
    return validate_key(name)


# -- backends ----------------------------------------------------------------------------
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
            raise StorageError(f"{self.uri(key)} does not exist")
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
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}; "
                    "create it (docker-compose's minio-init does) or fix SEMFLOW_STORAGE_URL"
                ) from None
            raise StorageError(
                f"S3 {what} on {self.uri(kw.get('Key', ''))} failed: {err}"
            ) from None
        except BotoCoreError as err:
            raise StorageError(
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
                raise StorageError(f"{self.uri(key)} does not exist") from None
            return self._call("get", self.client.get_object, Key=self._key(key))["Body"].read()
        return obj["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"S3 head on {self.uri(key)} failed: {err}") from None
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
