"""Static checks of docker-compose.yml (no Docker engine runs here): it parses, every image it
builds, file it mounts and command it runs exists in the repo, ports do not collide, every
variable is in .env.example and every service has a healthcheck."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?-][^}]*)?\}|(?<!\$)\$([A-Za-z_]\w*)")

REQUIRED = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery",
    "airflow-init": None,
    "postgres": None,
    "redis": None,
    "mongo": None,
    "qdrant": None,
    "minio": None,
    "minio-init": None,
    "mlflow": None,
    "bento": None,
    "bento-lb": None,
    "prometheus": None,
    "grafana": None,
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def _cmd(value) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else shlex.split(value)


def _copy_sources(dockerfile: Path) -> list[str]:
    """Source paths of COPY/ADD lines that copy from the build context."""
    srcs = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].upper() not in ("COPY", "ADD"):
            continue
        args = [p for p in parts[1:] if not p.startswith("--")]
        if any(p.startswith("--from") for p in parts[1:]):
            continue
        srcs += args[:-1]
    return srcs


def test_required_services_and_celery(services, compose):
    assert set(REQUIRED) <= set(services), sorted(set(REQUIRED) - set(services))
    for name, sub in REQUIRED.items():
        if sub:
            assert _cmd(services[name].get("command"))[0] == sub, name
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    # Every Airflow component shares one image, one JWT secret and the same metadata DB.
    airflow = [s for s in services if s.startswith("airflow-")]
    assert {services[s]["image"] for s in airflow} == {"semflow-airflow:local"}
    assert len({services[s]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for s in airflow}) == 1


def test_every_service_has_a_healthcheck(services):
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name} has no healthcheck"
        test = hc["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_depends_on_targets_exist_and_are_checkable(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = (spec or {}).get("condition", "service_started")
            assert cond in ("service_started", "service_healthy", "service_completed_successfully")
            if cond == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot job"


def test_built_images_exist_in_repo(services):
    built = {n: s["build"] for n, s in services.items() if "build" in s}
    assert {"airflow-scheduler", "mlflow", "bento"} <= set(built)
    for name, build in built.items():
        context = (REPO / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for src in _copy_sources(dockerfile):
            assert (context / src).exists(), f"{name}: {dockerfile.name} copies missing {src}"
        text = dockerfile.read_text()
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), f"{name}: image must not run as root"


def test_bind_mounts_exist(services):
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                assert (REPO / src).exists(), f"{name}: mounted {src} missing"


def test_commands_point_at_real_things(services):
    bento_df = (REPO / services["bento"]["build"]["dockerfile"]).read_text()
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])", bento_df, re.M).group(1))
    assert cmd[:3] == ["bentoml", "serve", "."] and "3000" in cmd
    # `bentoml serve .` runs the service that bentofile.yaml at the repo root names.
    assert (REPO / "bentofile.yaml").is_file(), "bentofile.yaml (the Bento's build file) is missing"
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    module = bentofile["service"].split(":")[0]
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), bentofile["service"]

    mlflow = _cmd(services["mlflow"]["command"])
    assert mlflow[:2] == ["mlflow", "server"]
    backend = mlflow[mlflow.index("--backend-store-uri") + 1]
    artifacts = mlflow[mlflow.index("--artifacts-destination") + 1]
    assert backend.startswith("postgresql") and "@postgres:5432/" in backend
    assert artifacts.startswith("s3://")
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"

    init = services["postgres"]["volumes"][1].split(":")[0]
    script = (REPO / init).read_text()
    for db in ("airflow", "mlflow", "semflow"):
        assert db in script
    assert "airflow db migrate" in "\n".join(_cmd(services["airflow-init"]["command"]))
    assert "mc mb" in "\n".join(_cmd(services["minio-init"]["command"]))

    # DAG/plugin folders the Airflow containers mount are the repo's.
    vols = services["airflow-worker"]["volumes"]
    assert "./dags:/opt/airflow/dags:ro" in vols and "./plugins:/opt/airflow/plugins:ro" in vols
    # Connections for every conn_id in sources.yaml.
    specs = yaml.safe_load((REPO / "sources.yaml").read_text())["sources"]
    env = services["airflow-worker"]["environment"]
    for spec in specs:
        if spec.get("conn_id"):
            assert f"AIRFLOW_CONN_{spec['conn_id'].upper()}" in env, spec["conn_id"]


def test_host_ports_do_not_collide(services):
    seen: dict[str, str] = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            parts = str(port).split(":")
            assert len(parts) >= 2, f"{name}: publish an explicit host port, got {port}"
            host = parts[-2]
            assert host not in seen, f"host port {host} used by {seen.get(host)} and {name}"
            seen[host] = name


def test_every_variable_is_in_env_example():
    text = COMPOSE.read_text()
    used = {a or b for a, b in _VAR.findall(text)}
    env = _env_example()
    missing = sorted(used - set(env))
    assert not missing, f"not in .env.example: {missing}"
    unused = sorted(set(env) - used)
    assert not unused, f".env.example defines unused variables: {unused}"
    assert not (REPO / ".env").exists() or ".env" in (REPO / ".gitignore").read_text()


def test_prometheus_scrapes_the_bento(services):
    prom = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    job = jobs["semflow-bento"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # every replica is scraped (each resolves under the service name), not the balancer
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["bento"] and sd["type"] == "A"
    assert str(sd["port"]) in [str(p) for p in services["bento"]["expose"]]


def test_grafana_dashboard_uses_bento_metrics():
    dash = json.loads((REPO / "docker/grafana/dashboards/semflow-service.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and all('job="semflow-bento"' in e for e in exprs)
    assert any("bentoml_service_request_duration_seconds_bucket" in e for e in exprs)
    prov = yaml.safe_load((REPO / "docker/grafana/provisioning/dashboards/semflow.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def test_mlflow_requires_a_login_and_every_client_has_one(services, compose):
    """Whoever can move `@champion` picks the model the Bento unpickles: MLflow runs its
    basic-auth app, its admin comes from .env, and every client logs in."""
    import configparser

    mlflow = services["mlflow"]
    cmd = _cmd(mlflow["command"])
    assert "--app-name" in cmd and cmd[cmd.index("--app-name") + 1] == "basic-auth", cmd
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "${MLFLOW_ADMIN_USER}"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${")  # CSRF secret from .env
    # the auth config is the repo's file; its user store lives on a volume, not in the container
    mounts = dict(v.split(":")[:2] for v in mlflow["volumes"])
    ini_src = next(src for src, dst in mounts.items() if dst == env["MLFLOW_AUTH_CONFIG_PATH"])
    ini = configparser.ConfigParser()
    ini.read_string((REPO / ini_src).read_text())
    assert "admin_password" not in ini["mlflow"], "the admin password belongs in .env"
    db = ini["mlflow"]["database_uri"]
    assert db.startswith("sqlite:////")
    volume = next(src for src, dst in mounts.items() if db[len("sqlite:///") :].startswith(dst))
    assert volume in compose["volumes"]
    dockerfile = (REPO / mlflow["build"]["dockerfile"]).read_text()
    assert '"mlflow[auth]==' in dockerfile  # Flask-WTF, which the basic-auth app needs

    clients = [
        n for n, s in services.items() if "SEMFLOW_MLFLOW_TRACKING_URI" in s.get("environment", {})
    ]
    assert {"bento", "airflow-worker", "airflow-scheduler"} <= set(clients)
    for name in clients:
        cenv = services[name]["environment"]
        assert cenv["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_ADMIN_USER}", name
        assert cenv["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}", name
    example = _env_example()
    assert len(example["MLFLOW_ADMIN_PASSWORD"]) >= 12  # MLflow refuses shorter admin passwords


def test_redis_memory_is_bounded_without_evicting_the_broker(services):
    """The embedding cache shares Redis with the Celery broker: bounded memory, and only keys
    with a TTL (the cache's; the broker's have none) may be evicted."""
    cmd = " ".join(_cmd(services["redis"]["command"]))
    assert "--maxmemory 512mb" in cmd
    assert "--maxmemory-policy volatile-lru" in cmd


def test_the_airflow_image_holds_the_pipeline_the_workspace_is_fed_from(services):
    """The DAGs run the DVC pipeline in a workspace copied from SEMFLOW_REPO: the image must
    hold every path the workspace copies, and say where they are."""
    from semflow.training.workspace import CODE

    dockerfile = REPO / "docker" / "airflow" / "Dockerfile"
    copied = set(_copy_sources(dockerfile))
    for rel in (*CODE, "params.yaml", "data"):
        top = rel.split("/")[0]
        assert rel in copied or top in copied, f"the Airflow image does not copy {rel}"
    assert "SEMFLOW_REPO=/opt/semflow" in dockerfile.read_text()
    env = services["airflow-worker"].get("environment") or {}
    assert str(env.get("SEMFLOW_DVC_REMOTE_URL", "")).startswith("s3://")


def test_bento_replicas_behind_a_load_balancer(services):
    """Several Bento replicas (each of SEMFLOW_WORKERS processes) on the Qdrant server
    backend, reached only through bento-lb, which finds every replica through Docker's DNS
    and sends traffic to the ready ones."""
    bento, lb = services["bento"], services["bento-lb"]
    env = bento["environment"]
    assert env["SEMFLOW_INDEX_BACKEND"] == "server"
    assert env["SEMFLOW_QDRANT_URL"].startswith("http://")  # one index every process opens
    assert env["SEMFLOW_WORKERS"] == "${SEMFLOW_WORKERS}"
    assert bento["deploy"]["replicas"] == "${SEMFLOW_BENTO_REPLICAS}"
    example = _env_example()
    assert int(example["SEMFLOW_BENTO_REPLICAS"]) >= 2 and int(example["SEMFLOW_WORKERS"]) >= 1
    # replicas cannot share a host port or a container name: only the balancer publishes
    assert "ports" not in bento and "container_name" not in bento
    assert [str(p) for p in bento["expose"]] == ["3000"]
    assert any(str(p).endswith(":3000") for p in lb["ports"])
    assert lb["depends_on"]["bento"]["condition"] == "service_healthy"
    mounts = dict(v.split(":")[:2] for v in lb["volumes"])
    cfg_src = next(src for src, dst in mounts.items() if dst.endswith("haproxy.cfg"))
    cfg = (REPO / cfg_src).read_text()
    assert "nameserver dns 127.0.0.11:53" in cfg  # Docker's DNS lists every replica
    templates = re.findall(r"^\s*server-template \S+ (\d+) (\S+)", cfg, re.M)
    assert templates and all(host == "bento:3000" for _, host in templates)
    assert "option httpchk GET /readyz" in cfg  # only ready replicas get traffic
    assert re.search(r"^\s*bind :3000$", cfg, re.M)
    # the balancer waits longer than the Bento's own request timeout
    timeout = int(re.search(r"timeout server (\d+)s", cfg).group(1))
    from semflow.config import Settings

    assert timeout > Settings().request_timeout_s
