"""Run `scripts/airflow_local.sh` (api-server + chosen components) on a free port for a test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from semflow.procs import stop_group

REPO = Path(__file__).resolve().parents[1]
DAG_IDS = sorted(p.stem for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def logs(home: Path) -> str:
    text = (home / "airflow_local.log").read_text()[-3000:]
    for f in sorted((home / "airflow" / "logs").glob("*.log")):
        text += f"\n--- {f.name}\n" + f.read_text()[-2000:]
    return text


@contextmanager
def local_airflow(home: Path, components: str, **env: str) -> Iterator[tuple[str, dict]]:
    """Yield (base URL, the environment the components run with) once every DAG is listed."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    full.update(
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW_PORT=str(port),
        SEMFLOW_AIRFLOW_COMPONENTS=components,
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        **env,
    )
    log = (home / "airflow_local.log").open("w")
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "airflow_local.sh")],
        env=full,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the script's children die with its process group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Parsing seven DAG files takes a minute on a quiet 2-core machine, several when
        # the machine is shared; a broken start still fails fast (the script exits).
        deadline = time.monotonic() + 600
        listed: set[str] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                listed = {d["dag_id"] for d in get_json(f"{url}/api/v2/dags?limit=100")["dags"]}
            except OSError:
                listed = set()
            if set(DAG_IDS) <= listed:
                break
            time.sleep(2)
        if not set(DAG_IDS) <= listed:
            raise RuntimeError(f"DAGs not listed in time (got {sorted(listed)}):\n{logs(home)}")
        yield url, full
    finally:
        stop_group(proc)
        log.close()
