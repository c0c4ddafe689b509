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


def test_content_hash_is_sha256_of_the_sorted_json_every_stored_hash_was_made_with():
    # The hash is computed with a prebuilt encoder: it must stay byte for byte what
    # json.dumps(sort_keys, default=str, ensure_ascii=False) gives, or every stored hash
    # would mismatch and a re-sync would re-embed the whole source.
    import hashlib
    import json

    doc = Document(
        "s",
        "1",
        'héllo "wörld" \n\t\u2028 \ud800',
        "ten",
        "kind",
        "ti",
        ("b", "a"),
        {"z": 1, "a": [1.5, None, True], "when": datetime(2026, 1, 2, tzinfo=UTC), "n": {"y": 2}},
    )
    body = json.dumps(
        [doc.tenant, doc.type, doc.title, doc.text, list(doc.labels), doc.metadata],
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    want = hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()
    assert doc.content_hash == want
    assert doc.content_hash == want  # the cached value
    assert Document.from_json(doc.to_json()) == doc  # the cache is no field
