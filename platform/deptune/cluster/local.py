"""The environment of a Ray that deptune starts on this machine: loopback only, no usage stats.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, so `apply()` must run before the first
`import ray` of the process. Never apply it on a driver that joins a multi-node cluster: the driver would
then think its address is 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import sys
import warnings
from pathlib import Path

LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray listener on 127.0.0.1
    "GLOO_SOCKET_IFNAME": "lo",  # torch.distributed (gloo) over loopback too
    "RAY_USAGE_STATS_ENABLED": "0",
}

TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # the 2 s default adds ~3 s to every run's teardown
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one actor process fewer per run (no spot preemption locally)
    "RAY_TRAIN_METRICS_ENABLED": "0",  # Train's own Prometheus metrics: callbacks in every controller
}
"""Per-run cost knobs. Ray Train hands RAY_TRAIN_* variables from the driver to its controller and
workers, so a sweep driver sets them on any cluster; `deptune.sweep.driver` uses them too."""


def apply() -> None:
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        warnings.warn("ray was imported before deptune.cluster.local.apply(): a local Ray may listen on all interfaces",
                      stacklevel=2)
    for key, value in {**LOCAL_RAY_ENV, **TRAIN_ENV}.items():
        os.environ.setdefault(key, value)


def private_ray_token() -> Path | None:
    """The token a local Ray 2.60 reads (and, when missing, writes with the umask's mode, 0644) at
    ~/.ray/auth_token: made here first, 0600 in a 0700 folder, and an existing one made private. Nothing
    to do when the token comes from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH or token auth is off."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN") \
            or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.parent.chmod(0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))  # what Ray's own generator makes: 256 random bits
    return path


def connect(address: str | None = None) -> bool:
    """Join `address` / $RAY_ADDRESS, or start a local Ray on 127.0.0.1. True if we started it.

    For a loopback-only local Ray, `deptune.cluster.local.apply()` must have run before `import ray`.
    """
    import ray  # here: apply() must run before the first `import ray` of a process
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return False
    apply()  # the CLI applied it before importing ray; this covers library callers' env vars
    private_ray_token()
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner polls: without it a
    # run whose controller is killed (a trial ASHA stops) keeps its workers' CPUs until Ray shuts down.
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", log_to_driver=True)
    return True
