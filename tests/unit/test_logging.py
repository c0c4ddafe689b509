"""semflow.logging: one JSON line per record, extras as keys, idempotent setup."""

from __future__ import annotations

import io
import json
import logging

from semflow.logging import configure_logging


def test_json_lines_with_extras_and_exceptions():
    buf = io.StringIO()
    configure_logging("INFO", stream=buf, logger="semflow.test_logging")
    log = logging.getLogger("semflow.test_logging.part")
    log.debug("hidden")
    log.info("synced %d docs", 3, extra={"source": "bank", "generation": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["msg"] == "synced 3 docs" and first["level"] == "info"
    assert first["logger"] == "semflow.test_logging.part"
    assert first["source"] == "bank" and first["generation"] == 7
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "error" and second["exc_type"] == "ValueError"
    assert "boom" in second["exc"]


def test_configure_twice_does_not_duplicate_and_level_from_settings(semflow_home, monkeypatch):
    from semflow.config import get_settings

    monkeypatch.setenv("SEMFLOW_LOG_LEVEL", "WARNING")
    get_settings.cache_clear()
    buf = io.StringIO()
    configure_logging(stream=buf, logger="semflow.test_logging2")
    log = configure_logging(stream=buf, logger="semflow.test_logging2")
    assert log.level == logging.WARNING
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(x)["msg"] for x in buf.getvalue().splitlines()] == ["loud"]
    assert not log.propagate
