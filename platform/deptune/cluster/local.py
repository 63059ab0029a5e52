"""The environment of a Ray that deptune starts on this machine: loopback only, no usage stats.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, so `apply()` must run before the first
`import ray` of the process. Never apply it on a driver that joins a multi-node cluster: the driver would
then think its address is 127.0.0.1.

A local Ray dies with the process that started it: Ray fate-shares its GCS, raylet and dashboard with the
driver (PR_SET_PDEATHSIG), but the raylet's two agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`)
outlive a SIGKILLed driver by a minute or more (they wait on the dead GCS). `connect` starts a reaper in
its own session (this file run as a script, standard library only) that kills whatever of the local Ray
is left once the driver is gone, however it died, and exits as soon as Ray is shut down.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import subprocess
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


_ADDRESS = re.compile(r"^(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?$")


def address_problem(address: str) -> str | None:
    """Why `address` cannot be what `ray.init` joins (HOST:PORT of a head's GCS, ray://HOST:PORT for Ray
    Client, auto, local), from its form alone; None when it can be one. Checked before anything is written."""
    if address in ("auto", "local"):
        return None
    found = _ADDRESS.match(address)
    hint = "give HOST:PORT (a head's GCS, e.g. 10.0.0.5:6379), ray://HOST:10001 (Ray Client) or auto"
    if address.startswith(("http://", "https://")):
        return f"an http(s):// address is the dashboard's (for `ray job submit`), not Ray's: {hint}"
    if found is None or (found["port"] is None and not address.startswith("ray://")):
        return f"{address!r} is not a Ray address: {hint}"
    if found["port"] is not None and not 0 < int(found["port"]) < 65536:
        return f"{address!r}: the port must be a number from 1 to 65535"
    return None


def apply() -> None:
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        warnings.warn(
            "ray was imported before deptune.cluster.local.apply(): a local Ray may listen on all interfaces",
            stacklevel=2,
        )
    for key, value in {**LOCAL_RAY_ENV, **TRAIN_ENV}.items():
        os.environ.setdefault(key, value)


def private_ray_token() -> Path | None:
    """The token a local Ray 2.60 reads (and, when missing, writes with the umask's mode, 0644) at
    ~/.ray/auth_token: made here first, 0600 in a 0700 folder, and an existing one made private. Nothing
    to do when the token comes from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH or token auth is off."""
    if (
        os.environ.get("RAY_AUTH_MODE", "token").lower() != "token"
        or os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
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
    for other in running_rays():
        print(
            f"warning: another Ray runs on this machine (GCS {other}); this run starts its own, and the two "
            f"share the machine's {os.cpu_count()} CPUs: pass --address {other} (or set RAY_ADDRESS) to join it, "
            f"or wait for it to end",
            file=sys.stderr,
            flush=True,
        )
    private_ray_token()
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner polls: without it a
    # run whose controller is killed (a trial ASHA stops) keeps its workers' CPUs until Ray shuts down.
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", log_to_driver=True)
    _start_reaper()
    return True


def running_rays() -> list[str]:
    """The GCS addresses of the Ray clusters whose head runs on this machine (Linux: from /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        try:
            if (entry / "comm").read_text().strip() != "gcs_server":
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        options = dict(a.decode(errors="replace").lstrip("-").split("=", 1) for a in args if b"=" in a)
        if "gcs_server_port" in options:
            found.append(f"{options.get('node-ip-address', '127.0.0.1')}:{options['gcs_server_port']}")
    return found


_REAPERS: list[subprocess.Popen] = []  # their stdin pipes stay open for as long as this process lives
POLL_S = 2.0


def _start_reaper() -> None:
    if not Path("/proc").is_dir():  # the reaper reads Linux's process table
        return
    _REAPERS.append(
        subprocess.Popen(
            [sys.executable, "-I", __file__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time): the start time tells a process from a later one reusing its pid."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):  # gone meanwhile
                continue
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(root: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Every process below `root` (Ray's GCS and raylet, the raylet's agents and workers), with start times."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return found


def _reap(driver: int) -> None:
    """Keep track of the driver's descendants until EOF on stdin (the driver's end, even by SIGKILL), then
    kill those still alive; exit early once the local Ray has been shut down (its first processes gone)."""
    known = descendants(driver, _process_table())
    known.pop(os.getpid(), None)
    first = dict(known)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break
        table = _process_table()
        if not any(table.get(pid, (0, None))[1] == started for pid, started in first.items()):
            return
        known.update(descendants(driver, table))
        known.pop(os.getpid(), None)
    table = _process_table()
    for pid, started in known.items():
        if table.get(pid, (0, None))[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue


if __name__ == "__main__":
    _reap(int(sys.argv[1]))
