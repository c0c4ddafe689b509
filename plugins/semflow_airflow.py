"""Airflow glue for semflow: build sources from Connections (hooks parse them), task helpers.

Lives in plugins/ because it imports Airflow; the semflow library itself never does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from semflow.sources.base import Source


def source_from_name(name: str) -> Source:
    """A Source for a sources.yaml entry, connected through its Airflow Connection."""
    from semflow.sources.spec import build_source, get_spec

    spec = get_spec(name)
    if spec.conn_id and spec.kind == "postgres":
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        engine = PostgresHook(postgres_conn_id=spec.conn_id).get_sqlalchemy_engine()
        return build_source(spec, engine=engine)
    if spec.conn_id and spec.kind == "mongo":
        from airflow.providers.mongo.hooks.mongo import MongoHook

        return build_source(spec, mongo_client=MongoHook(mongo_conn_id=spec.conn_id).get_conn())
    return build_source(spec)


def window_of(params: dict[str, Any], start: datetime | None, end: datetime | None) -> tuple:
    """The run's data interval; a manual run without one syncs everything (hash-skipped)."""
    if params.get("full_refresh") or start is None or start == end:
        return (None, None)
    return (start, end)
