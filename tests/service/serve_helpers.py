"""Start a real `bentoml serve` of the semflow Bento on a free port, and build small indexes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from semflow.procs import stop_group
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
KEYS = {"admin": "admin-key-0123", "bank": "bank-key-4567", "other": "other-key-8901"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
BANK = {"Authorization": f"Bearer {KEYS['bank']}"}
OTHER = {"Authorization": f"Bearer {KEYS['other']}"}


def api_keys_env() -> str:
    h = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in KEYS.items()}
    return json.dumps([h["admin"], f"{h['bank']}:bank", f"{h['other']}:other"])


def build_index(home: Path, embedder, docs, embedder_version: str | None = None) -> int:
    """Publish a generation with `docs` (on top of the live one); return its number."""
    from semflow.config import load_settings
    from semflow.index import open_store

    store = open_store(load_settings(home=home))
    version = embedder_version or embedder.version
    vectors = embedder.encode([d.text for d in docs])
    with store.writer(version, embedder.dimension, fresh=embedder_version is not None) as w:
        w.upsert([d.point_id for d in docs], vectors, [d.payload(version) for d in docs])
    gen = store.live_generation()
    assert gen is not None
    return gen


@contextmanager
def serve(
    home: Path,
    tmp: Path,
    procs: list[subprocess.Popen] | None = None,
    target: str = "bentos.service:Semflow",
    **env: str,
) -> Iterator[str]:
    """`bentoml serve <target>` with SEMFLOW_HOME=home; yields the base URL.

    The server process is appended to `procs` when given (benchmarks read its RSS)."""
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEMFLOW_")},
        "SEMFLOW_HOME": str(home),
        "SEMFLOW_API_KEYS": api_keys_env(),
        "SEMFLOW_INDEX_POLL_S": "0.5",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}",
        **env,
    }
    log = (tmp / "serve.log").open("w")
    exe = Path(sys.executable).with_name("bentoml")
    proc = subprocess.Popen(
        [str(exe), "serve", target, "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    if procs is not None:
        procs.append(proc)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"bentoml serve exited: {(tmp / 'serve.log').read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {(tmp / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)
        log.close()


def docs_for(tenant: str, texts: Sequence[str], type_: str = "faq", prefix: str = "d"):
    from semflow.documents import Document

    return [
        Document(
            source="tests",
            doc_id=f"{prefix}{i}",
            text=t,
            tenant=tenant,
            type=type_,
            title=f"{prefix}{i}",
            metadata={"lang": "en"},
        )
        for i, t in enumerate(texts)
    ]
