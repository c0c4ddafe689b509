"""Load the Banking77 sample into a PostgreSQL table (the demo's application database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from semflow.config import SAMPLE_DIR

# A fixed timestamp: loading the sample twice changes nothing and windows stay reproducible.
LOADED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def load_banking77(engine: Any, table: str = "banking77", tenant: str = "bank") -> int:
    """Create `table` if missing and insert the train split once; returns rows present."""
    df = pd.read_csv(SAMPLE_DIR / "train.csv")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE TABLE IF NOT EXISTS "{table}" (id integer PRIMARY KEY, text text NOT NULL, '
                "category text, tenant text NOT NULL, updated_at timestamptz NOT NULL, "
                "deleted boolean NOT NULL DEFAULT false)"
            )
        )
        rows = [
            {"id": i, "text": t, "category": c, "tenant": tenant, "ts": LOADED_AT}
            for i, (t, c) in enumerate(zip(df.text, df.category, strict=True))
        ]
        conn.execute(
            sa.text(
                f'INSERT INTO "{table}" (id, text, category, tenant, updated_at) '
                "VALUES (:id, :text, :category, :tenant, :ts) ON CONFLICT (id) DO NOTHING"
            ),
            rows,
        )
        return int(conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar())
