"""No dead panels: every metric the provisioned Grafana dashboard queries is in the Bento's
/metrics after traffic, and Prometheus scrapes the port and path the Bento really serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from tests.service.serve_helpers import ADMIN, build_index, docs_for, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker/grafana/dashboards/semflow-service.json"
# Series Prometheus makes itself, not the target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def dashboard_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    # a metric name is an identifier directly followed by its label selector
    return {m for e in exprs for m in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", e)}


def test_every_panel_has_data_after_traffic(tmp_path, embedder):
    home = tmp_path / "home"
    build_index(home, embedder, docs_for("bank", ["I lost my card", "reset my password"]))
    with serve(home, tmp_path) as url:
        for _ in range(3):
            for path, body in (
                ("/embed", {"texts": ["hello", "lost card"]}),
                ("/search", {"query": "card", "tenant": "bank"}),
            ):
                r = httpx.post(f"{url}{path}", json=body, headers=ADMIN, timeout=60)
                assert r.status_code == 200, r.text
        # Prometheus scrapes without an API key
        r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200
    exposed = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", r.text, re.M))
    wanted = dashboard_metrics() - PROMETHEUS_OWN
    assert wanted, "the dashboard queries no metric"
    assert wanted <= exposed, f"dead panels: {sorted(wanted - exposed)}"
    # the batching panel counts the engine's real model calls
    calls = re.search(r"^semflow_embed_batch_size_count(?:\{[^}]*\})? (\S+)", r.text, re.M)
    assert calls and float(calls.group(1)) >= 1


def test_prometheus_scrapes_the_port_and_path_the_bento_serves():
    """Prometheus scrapes every Bento replica (Docker's DNS gives each one's address), on the
    port the Bento listens on, not the load balancer in front of them."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    prom = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    job = {j["job_name"]: j for j in prom["scrape_configs"]}["semflow-bento"]
    (sd,) = job["dns_sd_configs"]
    (host,) = sd["names"]
    port = str(sd["port"])
    bento = compose["services"][host]
    # the container port the Bento listens on: `--port` in its command, else BentoML's 3000
    cmd = bento.get("command") or []
    cmd = cmd.split() if isinstance(cmd, str) else cmd
    served = cmd[cmd.index("--port") + 1] if "--port" in cmd else "3000"
    assert port == str(served)
    assert served in [str(p).split(":")[-1] for p in bento.get("expose", [])]
    assert "bento-lb" not in (host, *sd["names"])  # the balancer would hide all but one
    assert job.get("metrics_path", "/metrics") == "/metrics"
