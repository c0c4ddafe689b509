"""A source's top-level `tenant:` in sources.yaml holds for every kind of source, and a
tenant decided twice (a constant and a column, or two constants) is an error, not a guess."""

from __future__ import annotations

from pathlib import Path

import pytest

from semflow.errors import SettingsError
from semflow.sources.spec import build_source, load_specs


def _specs(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(f"sources:\n{body}")
    return path


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "docs.csv"
    path.write_text("id,text,label,org\n1,lost my card,card,acme\n2,top up failed,top_up,\n")
    return path


def test_files_source_documents_land_in_the_spec_tenant(tmp_path: Path, csv: Path) -> None:
    specs = _specs(
        tmp_path,
        f"  - {{name: own, kind: files, path: {csv}, tenant: acme,"
        " mapping: {labels: label, updated_at: null}}\n"
        # The same tenant said twice is fine.
        f"  - {{name: same, kind: files, path: {csv}, tenant: acme,"
        " mapping: {tenant_value: acme, updated_at: null}}\n"
        # Without a spec tenant the mapping decides, as before: a column (an empty value
        # falls back to mapping.tenant_value), or the constant, `default` when unset.
        f"  - {{name: col, kind: files, path: {csv},"
        " mapping: {tenant: org, tenant_value: other, updated_at: null}}\n"
        f"  - {{name: plain, kind: files, path: {csv}, mapping: {{updated_at: null}}}}\n"
        "  - {name: b77, kind: sample, tenant: bank}\n",
    )
    loaded = load_specs(specs)

    def tenants(name: str) -> list[str]:
        return [d.tenant for d in build_source(loaded[name]).extract(None, None)]

    docs = list(build_source(loaded["own"]).extract(None, None))
    assert [d.tenant for d in docs] == ["acme", "acme"]
    assert [d.labels for d in docs] == [("card",), ("top_up",)]
    assert tenants("same") == ["acme", "acme"]
    assert tenants("col") == ["acme", "other"]
    assert tenants("plain") == ["default", "default"]
    assert set(tenants("b77")) == {"bank"}


def test_mongo_source_documents_land_in_the_spec_tenant(tmp_path: Path) -> None:
    import mongomock

    client = mongomock.MongoClient()
    client["app"]["notes"].insert_many(
        [{"_id": "a", "body": "refund please"}, {"_id": "b", "body": "where is my card"}]
    )
    specs = _specs(
        tmp_path,
        "  - {name: notes, kind: mongo, database: app, collection: notes, tenant: shop,"
        " mapping: {id: _id, text: body, updated_at: null}}\n",
    )
    src = build_source(load_specs(specs)["notes"], mongo_client=client)
    assert {d.tenant for d in src.extract(None, None)} == {"shop"}


def test_postgres_spec_carries_the_tenant_into_its_mapping(tmp_path: Path) -> None:
    # Built without connecting: the engine is created lazily from the URL.
    specs = _specs(
        tmp_path,
        "  - {name: pg, kind: postgres, url: 'postgresql+psycopg2://u@127.0.0.1:1/x',"
        " table: docs, tenant: acme}\n",
    )
    src = build_source(load_specs(specs)["pg"])
    assert src.to_document({"id": 1, "text": "hello", "updated_at": None}).tenant == "acme"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ("{tenant: org}", r"sources\[0\]: source 'own': tenant 'acme' and mapping.tenant"),
        ("{tenant_value: other}", r"source 'own': tenant 'acme' and mapping.tenant_value 'other'"),
    ],
)
def test_a_tenant_decided_twice_is_an_error(
    tmp_path: Path, csv: Path, mapping: str, message: str
) -> None:
    specs = _specs(
        tmp_path, f"  - {{name: own, kind: files, path: {csv}, tenant: acme, mapping: {mapping}}}\n"
    )
    with pytest.raises(SettingsError, match=message):
        load_specs(specs)
