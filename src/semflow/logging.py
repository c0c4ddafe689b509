"""One structured-logging setup: JSON lines on stderr for the `semflow` loggers.

The service, the CLI and DAG tasks call `configure_logging()`; library modules only do
`logging.getLogger("semflow.<part>")`. Extra fields passed with `extra={...}` become keys.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

_HANDLER_NAME = "semflow-json"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    level: str | int | None = None, *, stream: IO[str] | None = None, logger: str = "semflow"
) -> logging.Logger:
    """Send `logger` (default: all `semflow.*`) to `stream` as JSON lines; safe to call twice.

    `level` defaults to the `SEMFLOW_LOG_LEVEL` setting. Records do not propagate to the
    root logger, so a host (Airflow, BentoML) that formats root logs does not print them twice;
    Airflow 3 captures a task's stderr into the task log.
    """
    if level is None:
        from semflow.config import get_settings

        level = get_settings().log_level
    log = logging.getLogger(logger)
    log.setLevel(level.upper() if isinstance(level, str) else level)
    for h in list(log.handlers):
        if h.get_name() == _HANDLER_NAME:
            log.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.propagate = False
    return log
