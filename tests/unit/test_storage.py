"""semflow.storage: key validation, the storage URL, local folder and S3 (moto server over
HTTP) storage."""

from __future__ import annotations

import pytest

from semflow.config import load_settings
from semflow.errors import SettingsError
from semflow.storage import (
    LocalStorage,
    S3Storage,
    StorageError,
    open_storage,
    validate_key,
    validate_name,
)


@pytest.mark.parametrize(
    "bad",
    [
        "../etc/passwd",
        "full/../../x",
        "/abs/path",
        "s3://bucket/key",
        "file:///etc/passwd",
        "http://example.com/x",
        "c:/windows",
        "a//b",
        "./a",
        "",
        "a\\b",
        "~/x",
        "a/b c",
    ],
)
def test_bad_names_are_rejected_with_a_sentence(bad):
    with pytest.raises(StorageError) as err:
        validate_name(bad)
    assert "dataset path" in str(err.value)


def test_good_keys_pass():
    for key in ["candidates/2026-05-01/manifest.json", "full/2026-05", "verified/x_y-1.parquet"]:
        assert validate_key(key) == key


def test_local_storage_refuses_escaping_keys(tmp_path):
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(StorageError):
        store.put("../outside.txt", b"x")
    assert not (tmp_path / "outside.txt").exists()


def test_storage_url_selection(tmp_path):
    assert isinstance(open_storage(load_settings(home=tmp_path)), LocalStorage)
    assert open_storage(load_settings(home=tmp_path)).uri() == str(tmp_path / "datasets")
    local = open_storage(load_settings(home=tmp_path, storage_url=str(tmp_path / "ds")))
    assert local.uri() == str(tmp_path / "ds")
    with pytest.raises(SettingsError, match="unsupported scheme"):
        open_storage(load_settings(home=tmp_path, storage_url="ftp://host/x"))
    with pytest.raises(StorageError, match=r"'\.\.'"):
        open_storage(load_settings(home=tmp_path, storage_url="s3://bucket/../x"))
    with pytest.raises(SettingsError, match="bucket"):
        open_storage(load_settings(home=tmp_path, storage_url="s3://Bad_Bucket/x"))


def test_local_storage_round_trip(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.put("a/b/c.json", b"{}")
    assert store.get("a/b/c.json") == b"{}" and store.exists("a/b/c.json")
    assert store.list() == store.list("a") == ["a/b/c.json"] and store.list("x") == []
    with pytest.raises(StorageError, match="does not exist"):
        store.get("a/b/missing.json")


def test_s3_storage_round_trip_under_its_prefix(moto_endpoint, s3_credentials, tmp_path):
    import boto3

    bucket = f"st-{tmp_path.parent.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    store = S3Storage(bucket, "datasets", endpoint_url=moto_endpoint)
    store.put("a/b/c.json", b"{}")
    assert store.get("a/b/c.json") == b"{}" and store.exists("a/b/c.json")
    assert not store.exists("a/b/missing.json")
    assert store.list() == store.list("a") == ["a/b/c.json"] and store.list("x") == []
    keys = [o["Key"] for o in store.client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["datasets/a/b/c.json"]
    assert store.uri("a/b/c.json") == f"s3://{bucket}/datasets/a/b/c.json"
    with pytest.raises(StorageError, match="does not exist"):
        store.get("a/b/missing.json")


def test_missing_bucket_is_a_clear_error(moto_endpoint, s3_credentials, semflow_home):
    storage = S3Storage("no-such-bucket", "datasets", endpoint_url=moto_endpoint)
    with pytest.raises(StorageError, match="does not exist"):
        storage.put("candidates/x.json", b"{}")
