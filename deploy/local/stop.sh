#!/usr/bin/env bash
# Stop what deploy/local/start.sh started (same DEPTUNE_LOCAL_DIR), by the pids recorded at start, never by
# name (`ray stop` would also end every other Ray on the machine). Each server runs in its own process
# group; whatever of a group outlives the grace period gets SIGKILL.
# The state folder (token, mlflow.db, artifacts, logs) stays; delete it to start afresh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

state="$DEPTUNE_LOCAL_DIR"
[[ -d "$state" ]] || { echo "stop.sh: no state folder $state: nothing to stop"; exit 0; }
grace_s="${DEPTUNE_STOP_TIMEOUT_S:-20}"

_live_members() {  # processes of group $1 that are not zombies (a zombie holds no port and dies with its parent)
    ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/' | wc -l
}
_wait_group() {  # wait up to $2 s for group $1 to end
    local deadline=$((SECONDS + $2))
    while (( SECONDS < deadline )); do
        (( $(_live_members "$1") == 0 )) && return 0
        sleep 0.2
    done
    (( $(_live_members "$1") == 0 ))
}

for name in ray mlflow; do
    pidfile="$state/$name.pid"
    [[ -f "$pidfile" ]] || continue
    pgid="$(cat "$pidfile")"
    if [[ "$pgid" =~ ^[0-9]+$ ]] && (( $(_live_members "$pgid") > 0 )); then
        if [[ "$name" == ray ]]; then
            kill -TERM "$pgid" 2>/dev/null || true  # `ray start --block` then stops its own processes in order
        else
            kill -TERM -- "-$pgid" 2>/dev/null || true
        fi
        if ! _wait_group "$pgid" "$grace_s"; then
            echo "stop.sh: $name (process group $pgid) still running after ${grace_s} s; SIGTERM to the group" >&2
            kill -TERM -- "-$pgid" 2>/dev/null || true
            _wait_group "$pgid" 5 || kill -KILL -- "-$pgid" 2>/dev/null || true
        fi
        echo "stopped $name (process group $pgid)"
    fi
    rm -f "$pidfile"
done

# Ray's private temp dir (sockets, session logs): remove it, with its ray_current_cluster file, so no later
# ray.init() can read a dead cluster's address from it. DEPTUNE_KEEP_RAY_LOGS=1 keeps it for debugging.
if [[ -f "$state/ray_tmp" ]]; then
    ray_tmp="$(cat "$state/ray_tmp")"
    rm -f "$ray_tmp/ray_current_cluster"
    if [[ "${DEPTUNE_KEEP_RAY_LOGS:-0}" != 1 && "$ray_tmp" == /tmp/deptune-ray.* ]]; then rm -rf "$ray_tmp"; fi
    rm -f "$state/ray_tmp"
fi
rm -f "$state/addresses"
