#!/usr/bin/env bash
# Start, on 127.0.0.1 only, a Ray head with token authentication ON and an MLflow tracking server with
# basic authentication ON (MLflow's basic-auth app; sqlite store, local artifacts), to try the cluster
# workflow (`ray job submit ... deptune sweep`) on one machine. Then `source deploy/local/env.sh`; stop
# both with deploy/local/stop.sh. Every secret is generated into the state folder (0700), each file 0600:
# auth_token (Ray), mlflow_credentials (MLFLOW_TRACKING_USERNAME/PASSWORD, the MLflow admin user),
# mlflow_auth.ini (the auth app's config) and mlflow_secret_key (Flask's session/CSRF key).
#
#   DEPTUNE_LOCAL_DIR   state folder: pids, logs, secrets, mlflow.db, artifacts (default deploy/local/.state)
#   DEPTUNE_PYTHON      the Python whose `ray` and `mlflow` run (default .venv/bin/python, else python3)
#   DEPTUNE_RAY_PORT DEPTUNE_RAY_DASHBOARD_PORT DEPTUNE_RAY_CLIENT_PORT DEPTUNE_RAY_AGENT_PORT
#   DEPTUNE_MLFLOW_PORT DEPTUNE_RAY_NUM_CPUS DEPTUNE_START_TIMEOUT_S
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

state="$DEPTUNE_LOCAL_DIR"
mkdir -p "$state"
chmod 700 "$state"  # the token lives here
state="$(cd "$state" && pwd)"
for name in ray mlflow; do
    if [[ -f "$state/$name.pid" ]] && _alive "$(cat "$state/$name.pid")"; then
        echo "start.sh: $name is already running (state $state); run stop.sh first" >&2
        exit 1
    fi
done
ray_bin="$(_tool ray)"
mlflow_bin="$(_tool mlflow)"
[[ -x "$ray_bin" && -x "$mlflow_bin" ]] || { echo "start.sh: ray/mlflow not found next to $DEPTUNE_PYTHON" >&2; exit 1; }

# The token: 256 random bits, made once per state folder, readable by this user only. Ray reads it from
# RAY_AUTH_TOKEN_PATH; ~/.ray/auth_token (Ray's default) is shared by every local Ray of this user.
if [[ ! -s "$state/auth_token" ]]; then
    (umask 077 && "$DEPTUNE_PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$state/auth_token")
fi

# MLflow's admin user (the only user: unauthenticated requests get 401, and other users nothing) and the
# auth app's settings, made once per state folder. The head's processes (Ray job drivers, trials) get the
# credentials from its environment, so a submission never carries them in its runtime env.
if [[ ! -s "$state/mlflow_credentials" ]]; then
    (umask 077 && "$DEPTUNE_PYTHON" -c 'import secrets; print(f"MLFLOW_TRACKING_USERNAME=deptune\nMLFLOW_TRACKING_PASSWORD={secrets.token_urlsafe(24)}")' >"$state/mlflow_credentials")
fi
if [[ ! -s "$state/mlflow_secret_key" ]]; then
    (umask 077 && "$DEPTUNE_PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$state/mlflow_secret_key")
fi
# shellcheck source=/dev/null
mlflow_user="$(. "$state/mlflow_credentials" && echo "$MLFLOW_TRACKING_USERNAME")"
# shellcheck source=/dev/null
mlflow_password="$(. "$state/mlflow_credentials" && echo "$MLFLOW_TRACKING_PASSWORD")"
(umask 077 && cat >"$state/mlflow_auth.ini" <<EOT
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$state/mlflow_auth.db
admin_username = $mlflow_user
admin_password = $mlflow_password
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOT
)
chmod 600 "$state/auth_token" "$state/mlflow_credentials" "$state/mlflow_secret_key" "$state/mlflow_auth.ini"

# Ray's own temp dir: short (unix socket paths are limited to 107 bytes) and private to this head, so
# its `ray_current_cluster` file never sends another local `ray.init()` to this cluster.
ray_tmp="$(mktemp -d /tmp/deptune-ray.XXXXXX)"
echo "$ray_tmp" >"$state/ray_tmp"

# Each server in its own session (setsid) so stop.sh can end exactly its process group, never by name:
# `ray stop` would kill every Ray on the machine.
# No inherited RAY_ADDRESS/RAY_AUTH_TOKEN: a shell that sourced env.sh of another state must not leak in.
# No drain on SIGTERM: Ray 2.60's `ray start --block` otherwise waits up to 30 s for Serve traffic to drain.
# Started from the state folder: jobs submitted without --working-dir run in Ray's cwd, and a `ray/` folder
# there (e.g. /tmp/ray, Ray's default temp dir) would shadow the ray package in `python -c` entrypoints.
(cd "$state" && exec env -u RAY_ADDRESS -u RAY_AUTH_TOKEN RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$state/auth_token" \
    MLFLOW_TRACKING_USERNAME="$mlflow_user" MLFLOW_TRACKING_PASSWORD="$mlflow_password" \
    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 \
    setsid "$ray_bin" start --head --block \
    --node-ip-address=127.0.0.1 --port="$DEPTUNE_RAY_PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DEPTUNE_RAY_DASHBOARD_PORT" \
    --ray-client-server-port="$DEPTUNE_RAY_CLIENT_PORT" \
    --dashboard-agent-listen-port="$DEPTUNE_RAY_AGENT_PORT" \
    --num-cpus="${DEPTUNE_RAY_NUM_CPUS:-$(nproc)}" \
    --temp-dir="$ray_tmp" --disable-usage-stats \
    >"$state/ray.log" 2>&1 </dev/null) &
echo $! >"$state/ray.pid"

# MLflow: sqlite store and proxied local artifacts (the cluster uses PostgreSQL and S3: deploy/mlflow/),
# behind the basic-auth app: every request needs the admin's credentials.
mkdir -p "$state/mlartifacts"
(cd "$state" && exec env MLFLOW_AUTH_CONFIG_PATH="$state/mlflow_auth.ini" \
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$state/mlflow_secret_key")" \
    setsid "$mlflow_bin" server --app-name basic-auth --host 127.0.0.1 --port "$DEPTUNE_MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$state/mlflow.db" \
    --serve-artifacts --artifacts-destination "$state/mlartifacts" \
    --workers 1 >"$state/mlflow.log" 2>&1 </dev/null) &
echo $! >"$state/mlflow.pid"

cat >"$state/addresses" <<EOT
RAY_ADDRESS=http://127.0.0.1:$DEPTUNE_RAY_DASHBOARD_PORT
RAY_GCS_ADDRESS=127.0.0.1:$DEPTUNE_RAY_PORT
RAY_CLIENT_ADDRESS=ray://127.0.0.1:$DEPTUNE_RAY_CLIENT_PORT
MLFLOW_TRACKING_URI=http://127.0.0.1:$DEPTUNE_MLFLOW_PORT
EOT

# Ready = the Jobs API and MLflow's REST API both answer an authenticated request.
if ! DEPTUNE_STATE="$state" MLFLOW_USER="$mlflow_user" MLFLOW_PASSWORD="$mlflow_password" "$DEPTUNE_PYTHON" - "$DEPTUNE_RAY_DASHBOARD_PORT" "$DEPTUNE_MLFLOW_PORT" \
        "${DEPTUNE_START_TIMEOUT_S:-120}" "$(cat "$state/ray.pid")" "$(cat "$state/mlflow.pid")" <<'PY'
import base64, os, sys, time, urllib.request
dash, mlflow, timeout, ray_pid, mlflow_pid = sys.argv[1:]
token = open(os.path.join(os.environ["DEPTUNE_STATE"], "auth_token")).read().strip()
basic = base64.b64encode(f"{os.environ['MLFLOW_USER']}:{os.environ['MLFLOW_PASSWORD']}".encode()).decode()
checks = {
    "ray": (f"http://127.0.0.1:{dash}/api/jobs/", {"Authorization": f"Bearer {token}"}, int(ray_pid)),
    "mlflow": (f"http://127.0.0.1:{mlflow}/api/2.0/mlflow/experiments/search?max_results=1",
               {"Authorization": f"Basic {basic}"}, int(mlflow_pid)),
}
deadline = time.monotonic() + float(timeout)
while checks and time.monotonic() < deadline:
    for name, (url, headers, pid) in list(checks.items()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"start.sh: {name} exited during start-up")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
                if r.status == 200:
                    del checks[name]
        except OSError:
            pass
    time.sleep(0.5)
if checks:
    sys.exit(f"start.sh: not ready after {timeout} s: {', '.join(checks)}")
PY
then
    echo "start.sh: see $state/ray.log and $state/mlflow.log; stopping what started" >&2
    "$(dirname "${BASH_SOURCE[0]}")/stop.sh" >/dev/null 2>&1 || true
    exit 1
fi

echo "Ray head:  http://127.0.0.1:$DEPTUNE_RAY_DASHBOARD_PORT (token auth on; token in $state/auth_token)"
echo "MLflow:    http://127.0.0.1:$DEPTUNE_MLFLOW_PORT (basic auth on; user $mlflow_user, credentials in $state/mlflow_credentials; sqlite:///$state/mlflow.db)"
echo "Next:      source $(dirname "${BASH_SOURCE[0]}")/env.sh"
