# shellcheck shell=bash
# Source me (bash/zsh) after deploy/local/start.sh: points the Ray job CLI, deptune and MLflow clients at
# the local servers, with their credentials (Ray's token, MLflow's basic-auth user).  `source deploy/local/env.sh`
_deptune_here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
_deptune_state="${DEPTUNE_LOCAL_DIR:-$_deptune_here/.state}"
if [[ ! -f "$_deptune_state/addresses" ]]; then
    echo "env.sh: no running servers in $_deptune_state (run deploy/local/start.sh)" >&2
else
    set -a
    # shellcheck source=/dev/null
    . "$_deptune_state/addresses"  # RAY_ADDRESS, MLFLOW_TRACKING_URI, ...
    set +a
    # Ray 2.60 token auth: the CLI and SDK send the token as "Authorization: Bearer ..."; they read
    # RAY_AUTH_TOKEN first, then the file named by RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token.
    export RAY_AUTH_MODE=token
    export RAY_AUTH_TOKEN_PATH="$_deptune_state/auth_token"
    RAY_AUTH_TOKEN="$(cat "$_deptune_state/auth_token")"
    export RAY_AUTH_TOKEN
    # MLflow's basic auth: the MLflow client, `mlflow ui` clients and deptune read these two.
    set -a
    # shellcheck source=/dev/null
    . "$_deptune_state/mlflow_credentials"  # MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
    set +a
    export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
fi
unset _deptune_here _deptune_state
