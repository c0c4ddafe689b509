"""Shared fixtures. Environment is set at import, before Airflow or semflow read it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="semflow-tests-"))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("AIRFLOW_HOME", str(_SESSION_TMP / "airflow"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["SEMFLOW_HOME"] = str(_SESSION_TMP / "home")
os.environ["BENTOML_HOME"] = str(_SESSION_TMP / "bentoml")  # never the developer's store
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
for key in [k for k in os.environ if k.startswith("SEMFLOW_") and k != "SEMFLOW_HOME"]:
    del os.environ[key]  # a developer's own settings must not leak into tests

from tests.helpers import PG_URL, free_port  # noqa: E402

# The longest files, longest first (each 5-10 minutes with `make test`'s two processes).
_LONGEST = ("test_demo.py", "test_training_dags.py", "test_pipeline.py", "test_workspace.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the other slow ones, then the rest, each file's tests
    together and in their own order: `make test` hands whole files to two processes in this
    order, so a long file started last no longer runs alone at the end."""

    def rank(name: str) -> int:
        return _LONGEST.index(name) if name in _LONGEST else len(_LONGEST)

    slow_files = {it.path for it in items if it.get_closest_marker("slow")}
    items.sort(key=lambda it: (rank(it.path.name), it.path not in slow_files))


@pytest.fixture
def semflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SEMFLOW_HOME for one test, with the settings cache reset around it."""
    from semflow.config import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("SEMFLOW_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def embedder():
    """The packaged MiniLM, loaded once per session."""
    from semflow.cache import LRUCache
    from semflow.config import load_settings
    from semflow.embedding import resolve_embedder

    return resolve_embedder(load_settings(), cache=LRUCache(50_000))


@pytest.fixture(scope="session")
def onnx_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose `onnx/` caches the packaged MiniLM's exports for the whole session."""
    return tmp_path_factory.mktemp("onnx-home")


@pytest.fixture(scope="session")
def onnx_embedders(onnx_home: Path):
    """The packaged MiniLM on fp32 and int8 ONNX, exported once (by the first encode)."""
    from semflow.config import load_settings
    from semflow.embedding import resolve_embedder

    out = {
        b: resolve_embedder(load_settings(home=onnx_home, backend=b)) for b in ("onnx", "onnx-int8")
    }
    for emb in out.values():
        emb.encode(["warm up"])
    return out


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata DB (SQLite) under the session's AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ)
    return home


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's S3 in server mode: real HTTP on 127.0.0.1, boto3 talks to it like to MinIO."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto accepts any credentials; boto3 needs some (and a region) to sign requests."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def pg_engine():
    """SQLAlchemy engine on the real local PostgreSQL (skips nothing: CI starts it)."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
    yield engine
    engine.dispose()
