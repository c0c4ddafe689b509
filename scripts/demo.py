"""`make demo`: the main job on the embedded default, end to end.

Loads the Banking77 sample as documents (into the local PostgreSQL when reachable, else
from the bundled files), runs the real DAGs with `dag.test()` (sync -> validate -> train ->
register), then starts `bentoml serve` with the champion and prints example requests.
A second run reuses what is cached (unchanged documents are skipped, DVC stages are cached).

Usage: python scripts/demo.py [--no-serve] [--port 3000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SEMFLOW_HOME", str(REPO / "var"))
os.environ.setdefault("AIRFLOW_HOME", str(Path(os.environ["SEMFLOW_HOME"]) / "airflow"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
sys.path.insert(0, str(REPO / "plugins"))

PG_URL = os.environ.get("SEMFLOW_APP_DB_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def step(n: int, total: int, text: str) -> float:
    print(f"\n[{n}/{total}] {text}", flush=True)
    return time.perf_counter()


def done(t0: float, extra: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.1f} s {extra}", flush=True)


def load_documents() -> str:
    """The source the demo syncs: PostgreSQL if reachable, else the bundled CSV."""
    import sqlalchemy as sa

    from semflow.sample_pg import load_banking77

    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        n = load_banking77(engine)
    except sa.exc.OperationalError as err:
        print(f"      PostgreSQL not reachable ({str(err.orig).strip()}); using the bundled files")
        return "banking77"
    os.environ.setdefault("AIRFLOW_CONN_SEMFLOW_APP_DB", PG_URL.replace("+psycopg2", ""))
    print(f"      {n} rows in PostgreSQL table banking77 ({PG_URL})")
    return "banking77_pg"


def airflow_db() -> None:
    marker = Path(os.environ["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists():
        return
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    marker.touch()


def run_dag(dag_id: str, conf: dict) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag(dag_id)
    if dag is None:
        raise SystemExit(f"DAG {dag_id} is missing from dags/")
    run = dag.test(logical_date=datetime.now(UTC), run_conf=conf)
    if run.state != "success":
        raise SystemExit(f"DAG {dag_id} ended {run.state}; see the log above")


def main() -> None:
    ap = argparse.ArgumentParser(description="semflow demo")
    ap.add_argument("--no-serve", action="store_true", help="stop after registering")
    ap.add_argument("--port", type=int, default=3000)
    args = ap.parse_args()  # noqa: F841  (used below once serving is wired)
    total = 5
    from semflow.config import get_settings

    s = get_settings()
    print(f"semflow demo — state in {s.home}")

    t = step(1, total, "loading the Banking77 sample as documents")
    source = load_documents()
    done(t)

    t = step(2, total, f"sync_documents DAG: {source} -> embedded index (first run embeds 10k texts)")
    airflow_db()
    run_dag("sync_documents", {"source": source, "full_refresh": False, "reconcile": True})
    from semflow.index import open_store

    with open_store(s).open_live() as idx:
        done(t, f"(generation {idx.generation}, {idx.count()} points)")
    # <DEMO-STEPS>


if __name__ == "__main__":
    main()
