"""Constants and small helpers shared by tests (importable as `tests.helpers`)."""

from __future__ import annotations

import os

PG_URL = os.environ.get("SEMFLOW_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SEMFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
