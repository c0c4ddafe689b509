"""Incremental sources: PostgreSQL, MongoDB, files."""

from __future__ import annotations

from semflow.sources.base import FieldMapping, Source
from semflow.sources.files import FileSource
from semflow.sources.mongo import MongoSource
from semflow.sources.postgres import PostgresSource

__all__ = ["FieldMapping", "FileSource", "MongoSource", "PostgresSource", "Source"]
