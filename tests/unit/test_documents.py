from __future__ import annotations

from datetime import UTC, datetime

import pytest

from semflow.config import load_settings
from semflow.documents import Document, point_id, to_utc
from semflow.errors import SettingsError


def test_point_id_is_deterministic_and_source_scoped():
    assert point_id("a", "1") == point_id("a", "1")
    assert point_id("a", "1") != point_id("b", "1")
    assert Document("a", "1", "x").point_id == point_id("a", "1")


def test_content_hash_tracks_indexed_fields_not_timestamps():
    base = Document("s", "1", "hello", labels=("x",), updated_at=datetime(2026, 1, 1, tzinfo=UTC))
    same = Document("s", "1", "hello", labels=("x",), updated_at=datetime(2026, 2, 1, tzinfo=UTC))
    assert base.content_hash == same.content_hash
    assert Document("s", "1", "hello!", labels=("x",)).content_hash != base.content_hash
    assert Document("s", "1", "hello", labels=("y",)).content_hash != base.content_hash
    assert Document("s", "1", "hello", labels=("x",), tenant="t2").content_hash != base.content_hash


def test_json_round_trip():
    doc = Document(
        "s",
        "7",
        "t",
        "ten",
        "kind",
        "title",
        ("a", "b"),
        {"k": 1},
        datetime(2026, 3, 1, 12, tzinfo=UTC),
        False,
    )
    assert Document.from_json(doc.to_json()) == doc


def test_to_utc_normalises():
    assert to_utc("2026-01-01T10:00:00Z") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert to_utc(datetime(2026, 1, 1, 10)).tzinfo is UTC
    assert to_utc(None) is None


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("index_backend", "mysql", "SEMFLOW_INDEX_BACKEND"),
        ("embed_batch_size", "0", "SEMFLOW_EMBED_BATCH_SIZE"),
        ("qdrant_url", "ftp://x", "SEMFLOW_QDRANT_URL"),
        ("collection", "no spaces allowed", "SEMFLOW_COLLECTION"),
    ],
)
def test_bad_setting_names_the_variable(env, value, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(**{env: value})
