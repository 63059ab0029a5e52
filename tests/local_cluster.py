"""Test helper: deploy/local (a Ray head with token auth and an MLflow server) on free 127.0.0.1 ports, in
the test's own state folder, always stopped by deploy/local/stop.sh (then SIGKILL for any leftover)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "deploy" / "local"


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def group_pids(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return [
        int(pid)
        for pid, group, stat in (line.split()[:3] for line in out.splitlines())
        if int(group) == pgid and not stat.startswith("Z")
    ]


def script_env(state: Path, ports: list[int], num_cpus: int = 1) -> dict[str, str]:
    """The environment start.sh/stop.sh run with: this Python, this state folder, these ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    env.update(
        DEPTUNE_PYTHON=sys.executable,
        DEPTUNE_LOCAL_DIR=str(state),
        DEPTUNE_RAY_NUM_CPUS=str(num_cpus),
        DEPTUNE_RAY_PORT=str(ports[0]),
        DEPTUNE_RAY_DASHBOARD_PORT=str(ports[1]),
        DEPTUNE_RAY_CLIENT_PORT=str(ports[2]),
        DEPTUNE_RAY_AGENT_PORT=str(ports[3]),
        DEPTUNE_MLFLOW_PORT=str(ports[4]),
    )
    return env


def logs_tail(state: Path, chars: int = 3000) -> str:
    return "".join(f"\n--- {p.name}\n" + p.read_text()[-chars:] for p in sorted(state.glob("*.log")))


@dataclass
class LocalCluster:
    state: Path
    script_env: dict[str, str]
    client_env: dict[str, str]  # what `source deploy/local/env.sh` exports, on top of os.environ
    dashboard: str  # http://127.0.0.1:<port>: the Jobs API
    mlflow: str  # http://127.0.0.1:<port>
    ports: list[int]  # GCS, dashboard, Ray Client, dashboard agent, MLflow
    groups: list[int]  # the process groups of Ray's head and of the MLflow server
    start_output: str  # what start.sh printed
    startup_s: float

    @property
    def token(self) -> str:
        return self.client_env["RAY_AUTH_TOKEN"]

    def jobs_api(self, path: str, timeout: float = 30) -> dict:
        """GET on the Jobs REST API with the token."""
        request = urllib.request.Request(
            f"{self.dashboard}/api/jobs/{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def mlflow_api(self, path: str, body: dict | None = None, timeout: float = 30) -> dict:
        """GET (or POST `body`) on MLflow's REST API, e.g. `runs/search`."""
        data = json.dumps(body).encode() if body is not None else None
        user, password = self.client_env["MLFLOW_TRACKING_USERNAME"], self.client_env["MLFLOW_TRACKING_PASSWORD"]
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()  # start.sh's MLflow runs basic auth
        request = urllib.request.Request(
            f"{self.mlflow}/api/2.0/mlflow/{path}",
            data=data,
            headers={"Content-Type": "application/json", "Authorization": f"Basic {basic}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())


@contextmanager
def local_cluster(tmp_path: Path, num_cpus: int = 1) -> Iterator[LocalCluster]:
    """deploy/local started in `tmp_path/state`; on exit stop.sh must succeed and leave no process of either
    server, no port of theirs open and no pid file or Ray temp folder behind."""
    state = tmp_path / "state"
    ports = free_ports(5)
    env = script_env(state, ports, num_cpus)
    started = time.monotonic()
    run = subprocess.run(["bash", str(LOCAL / "start.sh")], env=env, capture_output=True, text=True, timeout=240)
    startup_s = time.monotonic() - started
    groups = [
        int((state / f"{name}.pid").read_text()) for name in ("ray", "mlflow") if (state / f"{name}.pid").exists()
    ]
    try:
        assert run.returncode == 0, run.stdout + run.stderr + logs_tail(state)
        sourced = subprocess.run(
            ["bash", "-c", f"source {LOCAL / 'env.sh'} && env -0"], env=env, capture_output=True, text=True, check=True
        ).stdout
        client_env = dict(item.split("=", 1) for item in sourced.split("\0") if "=" in item)
        yield LocalCluster(
            state=state,
            script_env=env,
            client_env=client_env,
            dashboard=f"http://127.0.0.1:{ports[1]}",
            mlflow=f"http://127.0.0.1:{ports[4]}",
            ports=ports,
            groups=groups,
            start_output=run.stdout + run.stderr,
            startup_s=startup_s,
        )
    finally:
        stop = subprocess.run(["bash", str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True, timeout=120)
        for group in groups:  # whatever stop.sh missed must not outlive the test
            if group_pids(group):
                os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(group_pids(g) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    for group in groups:
        assert group_pids(group) == [], f"process group {group} still has processes after stop.sh"
    for port in (ports[0], ports[1], ports[2], ports[4]):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still accepts connections"
    assert not (state / "ray.pid").exists() and not (state / "ray_tmp").exists()


def listeners(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the processes hold, read from /proc (no ss/psutil)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:  # the process ended meanwhile
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_addr)
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                addr = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw)
                found.add((addr, int(hex_port, 16)))
    return found


def loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1") or addr.startswith("::ffff:127.")
