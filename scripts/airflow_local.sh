#!/usr/bin/env bash
# Start a local Airflow 3 for semflow: api-server + scheduler + dag-processor + triggerer,
# metadata in SQLite under var/airflow, DAGs from the repo's dags/, plugins from plugins/.
#
#   make airflow                        # or: bash scripts/airflow_local.sh
#   AIRFLOW_PORT=8081 make airflow      # another port
#
# Environment (all optional):
#   AIRFLOW_HOME              default <repo>/var/airflow
#   AIRFLOW_PORT              default 8080
#   SEMFLOW_AIRFLOW_PASSWORD  set it to log in as "admin" with this password; unset, the UI
#                             lets everyone in as admin (SimpleAuthManager all-admins, local only)
#   SEMFLOW_AIRFLOW_COMPONENTS  default "scheduler dag-processor triggerer" (besides api-server)
# Connections: every `conn_id` in sources.yaml becomes AIRFLOW_CONN_<ID> from the source's
# `url` / `url_env` (e.g. SEMFLOW_APP_DB_URL), the same settings the CLI uses.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
AIRFLOW="$VENV/bin/airflow"
[[ -x "$AIRFLOW" ]] || { echo "airflow_local: $AIRFLOW not found; run 'make venv' first" >&2; exit 2; }

export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO/var/airflow}"
PORT="${AIRFLOW_PORT:-8080}"
COMPONENTS="${SEMFLOW_AIRFLOW_COMPONENTS:-scheduler dag-processor triggerer}"
mkdir -p "$AIRFLOW_HOME/logs"

export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
# The repo root for the `bentos` package (register_model's bento task imports bentos.build).
export PYTHONPATH="$REPO/plugins:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# One secret for every component, kept across restarts: tokens signed by the api-server must
# verify in the scheduler's task runner.
for name in jwt_secret api_secret_key; do
  f="$AIRFLOW_HOME/.$name"
  [[ -s "$f" ]] || (umask 077; "$PY" -c "import secrets; print(secrets.token_urlsafe(32))" > "$f")
done
export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$AIRFLOW_HOME/.jwt_secret")"
export AIRFLOW__API__SECRET_KEY="$(cat "$AIRFLOW_HOME/.api_secret_key")"

if [[ -n "${SEMFLOW_AIRFLOW_PASSWORD:-}" ]]; then
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
  (umask 077; "$PY" -c 'import json, sys; print(json.dumps({"admin": sys.argv[1]}))' \
    "$SEMFLOW_AIRFLOW_PASSWORD" > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
  LOGIN="user admin, password from SEMFLOW_AIRFLOW_PASSWORD"
else
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
  LOGIN="no login: everyone is admin (set SEMFLOW_AIRFLOW_PASSWORD to require one)"
fi

# Connections from settings (sources.yaml conn_id + url/url_env), as AIRFLOW_CONN_* env vars.
while IFS= read -r line; do
  [[ -n "$line" ]] && export "${line?}" && echo "airflow_local: connection ${line%%=*}"
done < <("$PY" - <<'PYEOF'
import json

from sqlalchemy.engine import make_url

from semflow.sources.spec import load_specs

TYPES = {"postgres": "postgres", "mongo": "mongo"}
done = set()
for spec in load_specs().values():
    url = spec.resolved_url()
    if not spec.conn_id or spec.kind not in TYPES or not url or spec.conn_id in done:
        continue
    done.add(spec.conn_id)
    u = make_url(url)
    conn = {"conn_type": TYPES[spec.kind], "host": u.host, "port": u.port, "login": u.username,
            "password": u.password, "schema": u.database, "extra": dict(u.query)}
    print(f"AIRFLOW_CONN_{spec.conn_id.upper()}=" + json.dumps({k: v for k, v in conn.items() if v}))
PYEOF
)

LOG="$AIRFLOW_HOME/logs"
echo "airflow_local: AIRFLOW_HOME=$AIRFLOW_HOME; migrating the metadata DB"
"$AIRFLOW" db migrate > "$LOG/db-migrate.log" 2>&1 || { cat "$LOG/db-migrate.log" >&2; exit 1; }

PIDS=()
stop() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$AIRFLOW" api-server --port "$PORT" --host 127.0.0.1 > "$LOG/api-server.log" 2>&1 &
PIDS+=($!)
for c in $COMPONENTS; do
  "$AIRFLOW" "$c" > "$LOG/$c.log" 2>&1 &
  PIDS+=($!)
done

echo "airflow_local: Airflow UI at http://127.0.0.1:$PORT ($LOGIN)"
echo "airflow_local: components api-server $COMPONENTS; logs in $LOG; Ctrl-C stops all"
# Stop everything as soon as one component dies, so a broken start is not half-running.
wait -n "${PIDS[@]}"
rc=$?
echo "airflow_local: a component exited (rc=$rc); stopping the others; see $LOG" >&2
exit "$rc"
