"""Progress: log lines with rate and ETA where there is no terminal (Airflow, CI)."""

from __future__ import annotations

import logging

import numpy as np

from semflow.progress import progress


def test_without_a_terminal_progress_is_log_lines_with_rate_and_eta(monkeypatch, caplog):
    monkeypatch.setenv("SEMFLOW_PROGRESS", "log")
    with (
        caplog.at_level(logging.INFO, logger="semflow.progress"),
        progress("embedding", 4, "texts", every_s=0) as bar,
    ):
        for _ in range(4):
            bar.update()
    lines = [r.getMessage() for r in caplog.records if r.name == "semflow.progress"]
    assert lines[-1].startswith("embedding: 4/4 texts (100%), ")
    assert "texts/s, eta 0s" in lines[-1]
    assert len(lines) == 4


def test_off_is_silent_and_a_bar_goes_to_stderr(monkeypatch, caplog, capsys):
    monkeypatch.setenv("SEMFLOW_PROGRESS", "off")
    with caplog.at_level(logging.INFO), progress("x", 2) as bar:
        bar.update(2)
    assert not [r for r in caplog.records if r.name == "semflow.progress"]
    monkeypatch.setenv("SEMFLOW_PROGRESS", "bar")
    with progress("re-index", 3, "texts") as bar:
        bar.update(3)
    assert "re-index" in capsys.readouterr().err


def test_encode_all_matches_encode_and_reports(embedder, monkeypatch, caplog):
    monkeypatch.setenv("SEMFLOW_PROGRESS", "log")
    texts = [f"text number {i}" for i in range(9)]
    with caplog.at_level(logging.INFO, logger="semflow.progress"):
        got = embedder.encode_all(texts, "embed test", chunk=4)
    assert np.allclose(got, embedder.encode(texts), atol=1e-5)
    assert any("embed test: 9/9 texts" in r.getMessage() for r in caplog.records)
