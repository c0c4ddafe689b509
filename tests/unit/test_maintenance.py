"""semflow.maintenance: every step on real parts (SQLite catalog, qdrant-edge generations,
MLflow with a SQLite backend, a real sync for dead letters), dry run first, then for real."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from semflow.app import Services
from semflow.catalog import FAILED, INDEXED, Catalog
from semflow.config import get_settings
from semflow.errors import IndexError_, SettingsError
from semflow.index.qdrant_edge import EdgeStore
from semflow.maintenance import (
    cutoffs,
    dead_letter_sources,
    prune_failed_rows,
    prune_generations,
    purge_mlflow_runs,
    purge_predictions,
    rebuild_index,
    retry_dead_letters,
    run_maintenance,
    upgrade_index_layout,
)
from semflow.sources.base import FieldMapping
from semflow.sources.files import FileSource
from semflow.sparse import LexicalEncoder

REF = datetime(2026, 6, 1, tzinfo=UTC)


def test_cutoffs_come_from_the_reference_time():
    c = cutoffs(REF, 30, 7, 90)
    assert c["predictions_before"] == date(2026, 5, 2)
    assert c["failed_before"] == REF - timedelta(days=7)
    assert c["runs_before"] == REF - timedelta(days=90)
    with pytest.raises(SettingsError, match="failed_row_days"):
        cutoffs(REF, 30, 0, 90)


def test_prune_generations(tmp_path):
    store = EdgeStore(tmp_path / "idx", keep=100)
    for k in range(4):
        with store.writer("m@1", 4) as w:
            w.upsert(
                [f"00000000-0000-0000-0000-00000000000{k}"],
                np.eye(4, dtype=np.float32)[k : k + 1],
                [{"tenant": "t", "doc_id": str(k), "source": "s"}],
            )
    assert store.generations() == [1, 2, 3, 4]
    dry = prune_generations(store, 2, dry_run=True)
    assert dry.removed == ["1", "2"] and dry.dry_run
    assert store.generations() == [1, 2, 3, 4]
    real = prune_generations(store, 2)
    assert real.removed == ["1", "2"]
    assert store.generations() == [3, 4] and store.live_generation() == 4
    with store.open_live() as idx:
        assert idx.count() == 4
    assert prune_generations(store, 2).count == 0
    with pytest.raises(SettingsError):
        prune_generations(store, 0)


def test_upgrade_index_layout_rebuilds_only_an_old_one(tmp_path, lexical):
    before = LexicalEncoder(lexical.tokenizer_file.parent, stopwords=False)
    ids = [f"00000000-0000-0000-0000-00000000000{k}" for k in range(3)]
    texts = ["where is my card", "my card is lost", "refund from Quorbel"]
    payloads = [{"tenant": "t", "doc_id": str(k), "text": t} for k, t in enumerate(texts)]
    with EdgeStore(tmp_path / "idx", lexical=before).writer("m@1", 4) as w:
        w.upsert(ids, np.eye(4, dtype=np.float32)[:3], payloads)
    store = EdgeStore(tmp_path / "idx", lexical=lexical)  # this release's process
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    assert upgrade_index_layout(EdgeStore(tmp_path / "none"), cat).details == {
        "reason": "no live index generation"
    }
    dry = upgrade_index_layout(store, cat, dry_run=True)
    assert dry.removed == ["generation 1's layout"] and store.live_generation() == 1
    assert dry.details["outdated"] == ["stop words in its sparse vectors"]
    assert cat.recent_runs() == []  # neither the check nor the dry run is a run
    real = upgrade_index_layout(store, cat)
    assert real.removed == ["generation 1's layout"] and store.live_generation() == 2
    assert real.details["rebuild"]["points"] == 3
    with store.open_live() as idx:
        assert idx.outdated_layout() == [] and not idx.keeps_stopwords
        assert idx.search(None, "t", 3, mode="sparse", text="where is my") == []
    again = upgrade_index_layout(store, cat)  # the next day: nothing to do
    assert again.removed == [] and again.details["outdated"] == []
    assert store.live_generation() == 2
    # the run history says where generation 2 came from
    [run] = cat.recent_runs()
    assert (run["source"], run["mode"], run["status"], run["generation"]) == (
        "*",
        "rebuild",
        "succeeded",
        2,
    )
    assert run["counts"] == {"points": 3, "replaced": 1}


def test_a_failed_rebuild_is_recorded_with_its_error(tmp_path, lexical):
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    with pytest.raises(IndexError_, match="no live generation"):
        rebuild_index(EdgeStore(tmp_path / "none", lexical=lexical), cat)
    [run] = cat.recent_runs()
    assert (run["mode"], run["status"], run["generation"]) == ("rebuild", "failed", None)
    assert "no live generation" in run["error"]


def test_purge_predictions(tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    for d in ["2026-04-30", "2026-05-01", "2026-05-02", "2026-05-31"]:
        (folder / f"{d}.jsonl").write_text("{}\n")
    (folder / "notes.jsonl").write_text("keep me")
    before = cutoffs(REF, prediction_retention_days=30)["predictions_before"]
    dry = purge_predictions(tmp_path, before, dry_run=True)
    assert dry.removed == ["2026-04-30.jsonl", "2026-05-01.jsonl"]
    assert len(list(folder.iterdir())) == 5
    real = purge_predictions(tmp_path, before)
    assert real.to_dict()["count"] == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "2026-05-02.jsonl",
        "2026-05-31.jsonl",
        "notes.jsonl",
    ]


def test_prune_failed_rows(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'cat.db'}")

    def row(doc_id: str, status: str, changed: datetime) -> dict:
        return {
            "source": "s",
            "doc_id": doc_id,
            "point_id": f"p{doc_id}",
            "tenant": "t",
            "status": status,
            "changed_at": changed,
        }

    with cat.engine.begin() as conn:
        cat.record(
            [
                row("old-failed", FAILED, REF - timedelta(days=10)),
                row("new-failed", FAILED, REF - timedelta(days=2)),
                row("old-indexed", INDEXED, REF - timedelta(days=30)),
            ],
            conn,
        )
    older = cutoffs(REF)["failed_before"]
    dry = prune_failed_rows(cat, older, dry_run=True)
    assert dry.removed == ["s/old-failed"]
    assert len(cat.rows("s")) == 3
    real = prune_failed_rows(cat, older)
    assert real.removed == ["s/old-failed"]
    assert sorted(r["doc_id"] for r in cat.rows("s")) == ["new-failed", "old-indexed"]


def test_purge_mlflow_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    old_ms = int((REF - timedelta(days=120)).timestamp() * 1000)
    new_ms = int((REF - timedelta(days=10)).timestamp() * 1000)
    parent = client.create_run(exp, start_time=old_ms).info.run_id
    registered = client.create_run(
        exp, start_time=old_ms, tags={"mlflow.parentRunId": parent}
    ).info.run_id
    stale = client.create_run(exp, start_time=old_ms).info.run_id
    recent = client.create_run(exp, start_time=new_ms).info.run_id
    for r in (parent, registered, stale, recent):
        client.set_terminated(r)
    client.create_registered_model("clf")
    client.create_model_version(
        "clf", f"{tmp_path}/artifacts/{registered}/model", run_id=registered
    )

    older = cutoffs(REF)["runs_before"]
    dry = purge_mlflow_runs(uri, older, dry_run=True)
    assert dry.removed == [stale]
    assert sorted(dry.skipped) == sorted([parent, registered])
    assert client.get_run(stale).info.lifecycle_stage == "active"
    real = purge_mlflow_runs(uri, older)
    assert real.removed == [stale]
    assert client.get_run(stale).info.lifecycle_stage == "deleted"
    for r in (parent, registered, recent):
        assert client.get_run(r).info.lifecycle_stage == "active"
    assert purge_mlflow_runs(uri, older).count == 0


@pytest.mark.slow
def test_retry_dead_letters_resyncs_only_failed_docs(semflow_home, tmp_path, embedder):
    from semflow.index import open_store
    from semflow.sync import run_sync

    path = tmp_path / "docs.csv"
    texts = ["my card has not arrived", "exchange rate", "   ", "lost my card"]
    pd.DataFrame({"id": ["a", "b", "c", "d"], "text": texts}).to_csv(path, index=False)
    mapping = FieldMapping(updated_at=None, tenant_value="bank")

    def resolve(name: str) -> FileSource:
        return FileSource(name, path, mapping)

    s = get_settings()
    cat = Catalog(s.catalog_database_url)
    res = run_sync(resolve("docs"), Services.from_settings(s, embedder=embedder, catalog=cat))
    assert res.counts["failed"] == 1
    assert dead_letter_sources(cat, 5) == {"docs": 1}
    hash_b = {r["doc_id"]: r["content_hash"] for r in cat.rows("docs")}["b"]

    # The row gets fixed at the source; another row changes too, but that is the sync's job.
    texts[2], texts[1] = "top up failed", "exchange rate today"
    pd.DataFrame({"id": ["a", "b", "c", "d"], "text": texts}).to_csv(path, index=False)

    dry = retry_dead_letters(
        resolve, Services.from_settings(s, catalog=cat, embedder=embedder), dry_run=True
    )
    assert dry.removed == ["docs"] and dry.details["pending"] == {"docs": 1}
    assert cat.ids("docs", [FAILED]) == {"c"}

    real = retry_dead_letters(resolve, Services.from_settings(s, catalog=cat, embedder=embedder))
    assert real.removed == ["docs"]
    assert real.details["results"]["docs"]["retried"] == 1
    assert cat.ids("docs", [FAILED]) == set()
    assert cat.ids("docs", [INDEXED]) == {"a", "b", "c", "d"}
    assert {r["doc_id"]: r["content_hash"] for r in cat.rows("docs")}["b"] == hash_b
    with open_store(s).open_live() as idx:
        assert idx.count() == 4
        assert [
            h.payload["doc_id"]
            for h in idx.search(embedder.encode(["top up failed"])[0], "bank", 1)
        ] == ["c"]
    assert (
        retry_dead_letters(resolve, Services.from_settings(s, catalog=cat, embedder=embedder)).count
        == 0
    )


def test_retry_skips_without_a_live_index(semflow_home, tmp_path):
    s = get_settings()
    cat = Catalog(s.catalog_database_url)
    with cat.engine.begin() as conn:
        cat.record(
            [{"source": "x", "doc_id": "1", "point_id": "p", "tenant": "t", "status": FAILED}],
            conn,
        )
    rep = retry_dead_letters(
        lambda n: pytest.fail("must not resolve"), Services.from_settings(s, catalog=cat)
    )
    assert rep.removed == [] and rep.skipped == ["x"]
    assert rep.details["reason"] == "no live index generation"


def test_run_maintenance_reports_every_step(semflow_home):
    (semflow_home / "predictions").mkdir(parents=True)
    (semflow_home / "predictions" / "2026-01-01.jsonl").write_text("")
    reports = run_maintenance(REF, lambda n: pytest.fail("nothing to retry"), dry_run=True)
    assert [r.step for r in reports] == [
        "retry_dead_letters",
        "prune_failed_rows",
        "upgrade_index_layout",
        "prune_generations",
        "purge_predictions",
        "purge_mlflow_runs",
    ]
    assert all(r.dry_run for r in reports)
    assert reports[4].removed == ["2026-01-01.jsonl"]
    assert (semflow_home / "predictions" / "2026-01-01.jsonl").exists()
    assert run_maintenance(REF, str)[4].removed == ["2026-01-01.jsonl"]
    assert not (semflow_home / "predictions" / "2026-01-01.jsonl").exists()


def test_purge_reads_the_registry_of_its_own_tracking_uri(tmp_path, monkeypatch):
    """A process whose MLflow default registry points elsewhere (an earlier
    `mlflow.set_registry_uri`, here a server that has stopped) still purges against the
    tracking URI it was given: the registered version's run is kept, nothing waits on the
    dead server."""
    from mlflow.tracking import MlflowClient

    from tests.helpers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr("mlflow.tracking._model_registry.utils._registry_uri", dead)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    old_ms = int((REF - timedelta(days=120)).timestamp() * 1000)
    registered = client.create_run(exp, start_time=old_ms).info.run_id
    client.set_terminated(registered)
    client.create_registered_model("clf")
    client.create_model_version(
        "clf", f"{tmp_path}/artifacts/{registered}/model", run_id=registered
    )
    rep = purge_mlflow_runs(uri, cutoffs(REF)["runs_before"], dry_run=True)
    assert rep.removed == [] and rep.skipped == [registered]
