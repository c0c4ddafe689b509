"""Settings: renamed variables fail loudly instead of silently falling back."""

from __future__ import annotations

import pytest

from semflow.config import load_settings
from semflow.errors import SettingsError


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("SEMFLOW_MODEL_PATH", "SEMFLOW_EMBEDDER_PATH"),
        ("SEMFLOW_MODEL_NAME", "SEMFLOW_EMBEDDER_NAME"),
    ],
)
def test_a_renamed_variable_is_an_error_naming_the_new_one(monkeypatch, old, new):
    monkeypatch.setenv(old, "/models/mine")
    with pytest.raises(SettingsError, match=f"{old} is now {new}"):
        load_settings()


def test_an_embedder_name_cannot_hold_a_version_separator(monkeypatch):
    monkeypatch.setenv("SEMFLOW_EMBEDDER_NAME", "mini@v2")
    with pytest.raises(SettingsError, match="SEMFLOW_EMBEDDER_NAME"):
        load_settings()


def test_workers_and_their_threads(monkeypatch):
    monkeypatch.setenv("SEMFLOW_WORKERS", "2")
    s = load_settings()
    assert s.workers == 2 and s.threads_per_worker >= 1
    monkeypatch.setenv("SEMFLOW_MODEL_THREADS", "3")
    assert load_settings().threads_per_worker == 3
    monkeypatch.setenv("SEMFLOW_WORKERS", "0")
    with pytest.raises(SettingsError, match="SEMFLOW_WORKERS: Input should be greater"):
        load_settings()


@pytest.mark.parametrize("url", [None, ":memory:", "/var/lib/qdrant"])
def test_several_workers_need_an_index_every_process_can_open(monkeypatch, url):
    """qdrant-client's local mode locks its folder (or lives in one process's memory): a
    second worker would fail to start, or serve an empty index of its own."""
    monkeypatch.setenv("SEMFLOW_WORKERS", "2")
    monkeypatch.setenv("SEMFLOW_INDEX_BACKEND", "server")
    if url:
        monkeypatch.setenv("SEMFLOW_QDRANT_URL", url)
    with pytest.raises(SettingsError, match="SEMFLOW_WORKERS=2 needs an index every process"):
        load_settings()
    monkeypatch.setenv("SEMFLOW_QDRANT_URL", "http://qdrant:6333")
    assert load_settings().workers == 2
