"""`semflow status`: tables on a terminal, JSON with --json, and a part that is down says why
without hiding the others."""

from __future__ import annotations

import json

import pytest

from semflow.app import Services
from semflow.cli import main
from semflow.config import get_settings
from tests.helpers import free_port, lose_id_trackers


@pytest.fixture
def synced(semflow_home, tmp_path, embedder):
    from semflow.sync import run_sync
    from tests.integration.test_pipeline import small_source

    return run_sync(
        small_source(tmp_path), Services.from_settings(get_settings(), embedder=embedder)
    )


def test_json_names_generation_tenants_runs_and_models(synced, capsys):
    main(["status", "--json", "--service-url", ""])  # every part answered: no exit code
    out = json.loads(capsys.readouterr().out)
    idx, cat, models = out["index"], out["catalog"], out["models"]
    assert idx["ok"] and idx["live_generation"] == 1
    assert idx["points_per_tenant"] == {"bank": synced.counts["indexed"]}
    assert idx["embedder_version"].startswith("all-MiniLM-L6-v2@")
    assert idx["sparse"] == "a BM25 term space per tenant (1 in use)"
    assert cat["recent_runs"][0]["counts"]["indexed"] == synced.counts["indexed"]
    assert cat["documents"] == {"indexed": synced.counts["indexed"]} and cat["dead_letters"] == {}
    assert models["ok"] and models["champion"] is None and models["challenger"] is None


def test_tables_on_a_terminal(synced, capsys):
    main(["status", "--service-url", ""])
    text = capsys.readouterr().out
    for title in ("Index", "Points per tenant", "Recent syncs", "Model semflow"):
        assert title in text
    assert "bank" in text and "champion" in text
    assert "BM25 term space per tenant" in text


def test_an_index_from_before_tenant_term_spaces_says_what_refreshes_it(synced, capsys):
    from semflow.index.base import TENANT_SPACES

    store = Services.from_settings(get_settings()).store
    meta_file = store._gen_dir(store.live_generation()) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta[TENANT_SPACES] = None  # as a generation written before them
    meta_file.write_text(json.dumps(meta))
    main(["status", "--json", "--service-url", ""])
    sparse = json.loads(capsys.readouterr().out)["index"]["sparse"]
    assert sparse.startswith("one BM25 term space shared by all tenants")
    assert "semflow sync --full-refresh" in sparse


def test_an_index_that_kept_stop_words_says_what_refreshes_it(synced, capsys):
    from semflow.sparse import LexicalEncoder

    store = Services.from_settings(get_settings()).store
    meta_file = store._gen_dir(store.live_generation()) / "meta.json"
    meta = json.loads(meta_file.read_text())
    before = LexicalEncoder(get_settings().base_embedder_dir, stopwords=False)
    meta["sparse_encoder"] = before.version  # as a generation built before they were dropped
    meta_file.write_text(json.dumps(meta))
    main(["status", "--json", "--service-url", ""])
    sparse = json.loads(capsys.readouterr().out)["index"]["sparse"]
    assert sparse.startswith("a BM25 term space per tenant (1 in use); stop words kept")
    assert "semflow index rebuild" in sparse
    assert "semflow sync --full-refresh" in sparse


def test_a_part_that_is_down_says_why_and_the_rest_is_shown(synced, capsys, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("SEMFLOW_CATALOG_URL", f"postgresql+psycopg2://u:s3cret@127.0.0.1:{port}/x")
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as done:
        main(["status", "--json", "--service-url", f"http://127.0.0.1:{port}"])
    assert done.value.code == 1
    raw = capsys.readouterr().out
    out = json.loads(raw)
    assert out["index"]["ok"] and out["index"]["live_generation"] == 1
    assert not out["catalog"]["ok"] and "OperationalError" in out["catalog"]["error"]
    assert not out["service"]["ok"] and "Connect" in out["service"]["error"]
    assert "s3cret" not in raw


def test_a_live_generation_copied_in_part_is_a_failed_part(synced, capsys, tmp_path):
    """Files an interrupted copy lost: status names the generation and what repairs it."""
    store = Services.from_settings(get_settings()).store
    gen = store.live_generation()
    lose_id_trackers(store._gen_dir(gen), tmp_path / "lost")
    with pytest.raises(SystemExit) as done:
        main(["status", "--json", "--service-url", ""])
    assert done.value.code == 1
    index = json.loads(capsys.readouterr().out)["index"]
    assert not index["ok"]
    assert f"index generation {gen} is incomplete" in index["error"]
    assert "semflow sync --full-refresh" in index["error"]
