"""Named source definitions (`sources.yaml`), shared by the CLI and the DAGs.

Inside Airflow, `conn_id` names an Airflow Connection and the DAG passes a hook-made engine
or client; from the CLI, `url` (or the env var named by `url_env`) is used instead.

A source's tenant: the top-level `tenant:` puts every document of the source in that tenant,
for every kind. It is a constant, so it cannot be combined with a tenant column
(`mapping.tenant`) or a different `mapping.tenant_value`: either is a SettingsError naming the
source, never a silent choice. With neither set, documents land in tenant `default`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from semflow.config import REPO_ROOT
from semflow.errors import SettingsError
from semflow.sources.base import FieldMapping, Source

SOURCES_FILE = REPO_ROOT / "sources.yaml"


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    kind: Literal["postgres", "mongo", "files", "sample"]
    conn_id: str | None = None
    url: str | None = None
    url_env: str | None = None
    table: str | None = None
    query: str | None = None
    database: str | None = None
    collection: str | None = None
    path: str | None = None
    split: Literal["train", "test"] = "train"
    tenant: str = "default"
    mapping: FieldMapping = Field(default_factory=FieldMapping)

    @model_validator(mode="after")
    def _tenant_into_mapping(self) -> SourceSpec:
        """A top-level `tenant:` becomes the mapping's constant tenant (files, postgres, mongo
        read only the mapping), unless the mapping already decides the tenant otherwise."""
        if "tenant" not in self.model_fields_set:
            return self
        m = self.mapping
        if m.tenant:
            raise ValueError(
                f"source {self.name!r}: tenant {self.tenant!r} and mapping.tenant (column {m.tenant!r}) are both set; "
                "keep `tenant:` for one tenant for every document, or the column for a tenant "
                "per document (mapping.tenant_value is its fallback)"
            )
        if "tenant_value" in m.model_fields_set and m.tenant_value != self.tenant:
            raise ValueError(
                f"source {self.name!r}: tenant {self.tenant!r} and mapping.tenant_value "
                f"{m.tenant_value!r} disagree; set only one of them"
            )
        self.mapping = m.model_copy(update={"tenant_value": self.tenant})
        return self

    def resolved_url(self) -> str | None:
        return self.url or (os.environ.get(self.url_env) if self.url_env else None)


def load_specs(path: Path | None = None) -> dict[str, SourceSpec]:
    import yaml

    p = path or Path(os.environ.get("SEMFLOW_SOURCES_FILE", SOURCES_FILE))
    if not p.exists():
        raise SettingsError(f"sources file {p} does not exist (set SEMFLOW_SOURCES_FILE)")
    raw = yaml.safe_load(p.read_text()) or {}
    out = {}
    for i, item in enumerate(raw.get("sources") or []):
        try:
            spec = SourceSpec(**item)
        except ValidationError as err:
            e = err.errors()[0]
            where = "".join(f".{x}" for x in e["loc"])  # empty for a whole-entry check
            msg = e["msg"].removeprefix("Value error, ")
            raise SettingsError(f"{p}: sources[{i}]{where}: {msg}") from None
        out[spec.name] = spec
    return out


def get_spec(name: str, path: Path | None = None) -> SourceSpec:
    specs = load_specs(path)
    if name not in specs:
        raise SettingsError(f"unknown source {name!r}; defined: {', '.join(sorted(specs)) or '-'}")
    return specs[name]


def build_source(spec: SourceSpec, engine: Any = None, mongo_client: Any = None) -> Source:
    """Make the Source; `engine` / `mongo_client` come from Airflow hooks inside DAGs."""
    if spec.kind == "sample":
        from semflow.sample import banking77_source

        return banking77_source(spec.split, tenant=spec.tenant, name=spec.name)
    if spec.kind == "files":
        from semflow.sources.files import FileSource

        if not spec.path:
            raise SettingsError(f"source {spec.name!r}: 'path' is required for kind files")
        path = Path(spec.path)
        return FileSource(spec.name, path if path.is_absolute() else REPO_ROOT / path, spec.mapping)
    if spec.kind == "postgres":
        from semflow.sources.postgres import PostgresSource

        target = engine or spec.resolved_url()
        if target is None:
            raise SettingsError(
                f"source {spec.name!r}: needs a url/url_env (or conn_id in Airflow)"
            )
        return PostgresSource(spec.name, target, spec.table, spec.query, spec.mapping)
    from semflow.sources.mongo import MongoSource

    client = mongo_client or spec.resolved_url()
    if client is None or not spec.database or not spec.collection:
        raise SettingsError(
            f"source {spec.name!r}: kind mongo needs url/url_env (or conn_id), database, collection"
        )
    return MongoSource(spec.name, client, spec.database, spec.collection, spec.mapping)
