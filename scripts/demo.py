"""`make demo`: the main job on the embedded default, end to end.

Loads the Banking77 sample as documents (into the local PostgreSQL when reachable, else
from the bundled files), runs the real DAGs with `dag.test()` (sync -> validate -> train ->
register), then starts `bentoml serve` with the champion and prints example requests.
A second run reuses what is cached (unchanged documents are skipped, DVC stages are cached).

Usage: python scripts/demo.py [--no-serve] [--port 3000]
"""

from __future__ import annotations

import argparse
import json
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
# register_model's bento task imports `bentos.build` (the Airflow image and `make airflow`
# put the repo root on PYTHONPATH for the same reason).
sys.path.insert(0, str(REPO))

STARTED = time.perf_counter()
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


def trained_key(overrides: dict) -> str:
    """What training depends on: the validated snapshot, params (+ overrides) and the code."""
    import hashlib

    from semflow.training import Paths
    from semflow.training.provenance import file_md5, git_commit

    snap = Paths.for_home().snapshot
    params = (REPO / "params.yaml").read_text() + json.dumps(overrides, sort_keys=True)
    parts = [file_md5(snap), params, git_commit()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def champion_version() -> str | None:
    from semflow import registry
    from semflow.config import get_settings

    s = get_settings()
    c = registry.client(s.tracking_uri)
    try:
        return str(c.get_model_version_by_alias(s.registered_model, registry.CHAMPION).version)
    except Exception:
        return None


def api_key() -> tuple[str, str]:
    """A demo API key (kept under var/ so a second run prints the same one) and its hash."""
    import secrets

    from semflow.config import get_settings
    from semflow.serving.auth import hash_key

    path = get_settings().home / "demo-api-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    key = path.read_text().strip()
    return key, hash_key(key)


def where_to_look(s, port: int, champion: str | None) -> str:
    """The lines telling a person where each part of the demo is to be seen."""
    from semflow.training.figures import write_figures

    pipeline = s.home / "pipeline"
    pictures = write_figures(pipeline / "plots", pipeline / "plots")
    airflow_home = os.environ["AIRFLOW_HOME"]
    rows = [
        (
            "Airflow",
            f"SEMFLOW_HOME={s.home} AIRFLOW_HOME={airflow_home} make airflow  ->  "
            "http://127.0.0.1:8080/dags "
            "(the demo's DAG runs, graphs, logs; trigger sync_documents from its form)",
        ),
        (
            "MLflow",
            f".venv/bin/mlflow ui --backend-store-uri {s.tracking_uri}  ->  "
            f"http://127.0.0.1:5000/#/models/{s.registered_model}/versions/{champion} "
            "(alias, gate verdict, lineage tags; the run's evaluation/ holds the pictures)",
        ),
        ("Bento", f"http://127.0.0.1:{port}/docs  (Swagger UI of every route, once serving)"),
        ("plots", "  ".join(str(p) for p in pictures.values())),
        ("dvc", f"cd {pipeline} && dvc metrics show && dvc plots show  (HTML of both plots)"),
    ]
    return "\n".join(f"  {name:<15} {text}" for name, text in rows)


def example_calls() -> list[tuple[str, dict]]:
    return [
        ("embed", {"texts": ["I lost my card"], "normalize": True}),
        ("similarity", {"pairs": [["I lost my card", "my card is missing"]]}),
        ("search", {"query": "my card has not arrived", "tenant": "bank", "top_k": 3}),
        ("classify", {"texts": ["I lost my card", "how do I top up by bank transfer"]}),
        (
            "rank",
            {
                "query": "card not arrived",
                "candidates": [
                    {"id": "a", "text": "Where is my new card?"},
                    {"id": "b", "text": "How do I change my PIN?"},
                ],
                "top_n": 2,
            },
        ),
    ]


def examples(url: str, key: str) -> str:
    h = f'-H "Authorization: Bearer {key}" -H "Content-Type: application/json"'
    calls = example_calls()
    lines = [f"curl -s {url}/{name} {h} -d '{json.dumps(body)}'" for name, body in calls]
    lines += [f'curl -s {url}/{p} -H "Authorization: Bearer {key}"' for p in ("labels", "model")]
    lines += [f'curl -s {url}/health -H "Authorization: Bearer {key}"', f"open {url}/docs"]
    return "\n".join(lines)


def check(url: str, key: str) -> bool:
    """Send every example request once; True when all answer 200."""
    import httpx

    auth = {"Authorization": f"Bearer {key}"}
    ok = True
    for name, body in example_calls():
        r = httpx.post(f"{url}/{name}", json=body, headers=auth, timeout=120)
        print(f"      POST /{name}: {r.status_code} {r.text[:100]}", flush=True)
        ok &= r.status_code == 200
    for path in ("labels", "model", "health"):
        r = httpx.get(f"{url}/{path}", headers=auth, timeout=30)
        print(f"      GET /{path}: {r.status_code} {r.text[:100]}", flush=True)
        ok &= r.status_code == 200
    return ok


def serve(port: int, key: str, key_hash: str, banner: str, smoke: bool = False) -> None:
    import httpx

    env = {**os.environ, "SEMFLOW_API_KEYS": json.dumps([key_hash])}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src")])
    exe = Path(sys.executable).with_name("bentoml")
    cmd = [str(exe), "serve", "bentos.service:Semflow", "--port", str(port)]
    # Its own process group, so that stopping it stops bentoml's worker processes too: an
    # orphaned worker would keep serving the port and hold this script's stdout open.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"bentoml serve exited with {proc.returncode}; see its log above")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise SystemExit("bentoml serve did not become ready within 180 s")
        ready = f"ready {time.perf_counter() - STARTED:.0f} s after the demo started"
        print(f"\nsemflow is serving on {url} ({ready}; Ctrl-C stops it). Try:\n\n{banner}\n")
        sys.stdout.flush()
        if smoke:
            if not check(url, key):
                raise SystemExit("some example requests failed; see above")
            print("\nevery example request answered 200", flush=True)
            return
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        from semflow.procs import stop_group

        stop_group(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description="semflow demo")
    ap.add_argument("--no-serve", action="store_true", help="stop after registering")
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--retrain", action="store_true", help="train even if nothing changed")
    ap.add_argument("--quick", action="store_true", help="a 10-intent subset, about 3 minutes")
    ap.add_argument(
        "--full", action="store_true", help="params.yaml as it is (eight fine-tune epochs)"
    )
    ap.add_argument(
        "--check", action="store_true", help="call every example once after start, then stop"
    )
    args = ap.parse_args()
    total = 6
    from semflow.config import get_settings

    s = get_settings()
    print(f"semflow demo: state in {s.home}")

    t = step(1, total, "loading the Banking77 sample as documents")
    source = load_documents()
    done(t)

    t = step(
        2, total, f"sync_documents DAG: {source} -> embedded index (first run embeds 13k texts)"
    )
    airflow_db()
    run_dag("sync_documents", {"source": source, "full_refresh": False, "reconcile": True})
    from semflow.app import Services

    with Services.from_settings(s).store.open_live() as idx:
        done(t, f"(generation {idx.generation}, {idx.count()} points)")

    t = step(3, total, "validate_data DAG: snapshot + great-expectations suites + drift")
    from semflow.training import load_pipeline_params

    modes = load_pipeline_params().demo  # params.yaml's `demo` section
    mode = "full" if args.full else "quick" if args.quick else "default"
    if mode != "full" and mode not in modes:
        raise SystemExit(f"params.yaml has no demo.{mode} section (the demo's overrides)")
    overrides = {} if mode == "full" else modes[mode]
    run_dag("validate_data", {"overrides": overrides})
    done(t)

    stamp = s.home / "pipeline" / ".demo-trained"
    key = trained_key(overrides)
    champion = champion_version()
    cached = stamp.exists() and stamp.read_text().split() == [key, str(champion)]
    if cached and not args.retrain:
        step(4, total, "train_models DAG: cached (same snapshot, params and code as champion)")
        step(5, total, f"register_model DAG: cached (champion v{champion})")
    else:
        t = step(4, total, "train_models DAG: fine-tune, classifier, ranker, evaluate")
        conf = {"overrides": overrides, "finetune": True, "train_ranker": True}
        run_dag("train_models", conf)
        done(t)
        t = step(5, total, "register_model DAG: gate, champion alias, Bento build, reindex")
        conf = {"overrides": overrides, "build_bento": True, "reindex": True}
        if args.quick:  # the subset's lower floors weaken the gate: an explicit, logged choice
            conf |= {"force": True, "force_reason": "demo --quick: a 10-intent subset"}
        run_dag("register_model", conf)
        done(t)
        champion = champion_version()
        stamp.write_text(f"{key} {champion}")

    metrics = json.loads((s.home / "pipeline" / "metrics" / "evaluate.json").read_text())
    gate = s.home / "pipeline" / "metrics" / "register.json"
    print("\nArtefacts:")
    print(f"  index           {s.index_dir}  (`semflow index status`)")
    print(f"  catalog         {s.catalog_database_url}")
    print(
        f"  MLflow          {s.tracking_uri}  (UI: .venv/bin/mlflow ui --backend-store-uri "
        f"{s.tracking_uri})"
    )
    print(f"  champion        models:/semflow@champion = v{champion}")
    print(f"  Bento           semflow:v{champion}  (`.venv/bin/bentoml list`)")
    print(f"  DVC-style files {s.home / 'pipeline'}  (metrics/, plots/, reports/validation/)")
    print(f"  gate            {gate.read_text().strip() if gate.exists() else 'n/a'}")
    print("  metrics         " + json.dumps({k: metrics[k] for k in ("classifier", "search")}))
    print("\nWhere to look:")
    print(where_to_look(s, args.port, champion), flush=True)

    if args.no_serve:
        print(f"\nsemflow demo: done in {time.perf_counter() - STARTED:.0f} s (not serving)")
        return
    step(6, total, "bentoml serve bentos.service:Semflow (champion from the registry)")
    key_plain, key_hash = api_key()
    url = f"http://127.0.0.1:{args.port}"
    serve(args.port, key_plain, key_hash, examples(url, key_plain), smoke=args.check)


if __name__ == "__main__":
    main()
