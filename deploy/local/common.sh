# shellcheck shell=bash
# Shared settings of start.sh and stop.sh (sourced, not run).
# Everything is configurable by environment variables so that several copies (tests, a second user) can
# run side by side on free ports with their own state folder.

_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_repo="$(cd "$_here/../.." && pwd)"

# Where pids, logs, the token, the sqlite store and the artifacts live.
DEPTUNE_LOCAL_DIR="${DEPTUNE_LOCAL_DIR:-$_here/.state}"

# Ports (all bound to 127.0.0.1).
DEPTUNE_RAY_PORT="${DEPTUNE_RAY_PORT:-6379}"                     # GCS
DEPTUNE_RAY_DASHBOARD_PORT="${DEPTUNE_RAY_DASHBOARD_PORT:-8265}" # dashboard + Jobs API
DEPTUNE_RAY_CLIENT_PORT="${DEPTUNE_RAY_CLIENT_PORT:-10001}"      # Ray Client (ray://)
DEPTUNE_RAY_AGENT_PORT="${DEPTUNE_RAY_AGENT_PORT:-52365}"        # dashboard agent (HTTP); its default is fixed
DEPTUNE_MLFLOW_PORT="${DEPTUNE_MLFLOW_PORT:-5000}"

# The Python whose `ray` and `mlflow` we run: $DEPTUNE_PYTHON, else the repo's .venv, else python3 on PATH.
if [[ -z "${DEPTUNE_PYTHON:-}" ]]; then
    if [[ -x "$_repo/.venv/bin/python" ]]; then DEPTUNE_PYTHON="$_repo/.venv/bin/python"; else DEPTUNE_PYTHON="$(command -v python3)"; fi
fi

# Entry points of jobs submitted to the local head (`python`, `deptune`) resolve through the head's PATH:
# put this Python's bin folder first.
PATH="$(dirname "$DEPTUNE_PYTHON"):$PATH"
export PATH

_tool() {  # the console script next to DEPTUNE_PYTHON, else the one on PATH
    local bin
    bin="$(dirname "$DEPTUNE_PYTHON")/$1"
    if [[ -x "$bin" ]]; then echo "$bin"; else command -v "$1"; fi
}

# Loopback only, no telemetry: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when imported.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
# No MLflow job runner: deptune runs no MLflow server jobs (GenAI scorers, trace rollups), and it costs a
# handful of ~250 MB huey processes.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
