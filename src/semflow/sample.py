"""The bundled Banking77 sample (CC-BY-4.0, PolyAI) as a semflow source."""

from __future__ import annotations

from typing import Literal

from semflow.config import SAMPLE_DIR
from semflow.errors import SettingsError
from semflow.sources.base import FieldMapping
from semflow.sources.files import FileSource


def banking77_source(
    split: Literal["train", "test"] = "train", tenant: str = "bank", name: str | None = None
) -> FileSource:
    """Rows of `data/banking77/<split>.csv`: doc_id = row number, labels = (category,)."""
    if split not in ("train", "test"):
        raise SettingsError(f"unknown Banking77 split {split!r}; use 'train' or 'test'")
    mapping = FieldMapping(
        id="@row",
        text="text",
        labels="category",
        updated_at=None,
        tenant_value=tenant,
        type_value="support_query",
    )
    return FileSource(name or f"banking77-{split}", SAMPLE_DIR / f"{split}.csv", mapping)
