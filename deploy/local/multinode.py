#!/usr/bin/env python3
"""A multi-node Ray cluster on one machine, laid out as a real one: nodes that share no disk, storage
that every node reaches over the network, tracking on a server.

- a head node (as KubeRay's: `--num-cpus 0`, so no trial runs there; jobs' drivers do) on 127.0.0.2 and
  worker nodes on 127.0.0.3, .4, ... (Ray rewrites 127.0.0.1 to the machine's external address, so every
  node gets its own loopback address), all with one Ray auth token;
- each worker node in its own mount namespace (`unshare -m`, needs root) with a private tmpfs over
  /tmp (Ray's temp dir, and whatever the driver keeps there), over the Hugging Face cache and over any
  `--private` folder (e.g. a run's output_dir elsewhere): a worker sees none of the driver's local files
  and the driver none of a worker's. Code under /tmp (a fresh clone, its .venv) is bound back read-only;
- S3 for `train.storage_path: s3://deptune/...`: moto's standalone server (what Ray's own tests use)
  behind a small TCP proxy that can refuse connections for a while (an outage without losing moto's
  in-memory objects); every node and client gets `AWS_ENDPOINT_URL` and credentials;
- MLflow: a real `mlflow server` with proxied artifacts; its backend store `--mlflow-db` (PostgreSQL, in a
  schema of its own), else sqlite in the state folder;
- the study: `DEPTUNE_STUDY_STORAGE` = `--study-db`, else sqlite in the state folder (only the sweep's
  driver opens the study, and `ray job submit` runs it on the head, so sqlite works while drivers stay there).

Everything listens on loopback; every process started is stopped by `down` (the whole process tree of
each, by pid: `ray stop` would end every Ray on the machine), and the mounts die with their namespaces.

    python deploy/local/multinode.py up [--state DIR] [--workers 2] [--cpus 2] [--study-db URL] [--mlflow-db URL]
    eval "$(python deploy/local/multinode.py env [--state DIR])"     # RAY_ADDRESS, tokens, S3, MLflow
    ray job submit --working-dir . -- deptune sweep search_spaces/demo.yaml --set train.storage_path=s3://deptune/ray
    python deploy/local/multinode.py down [--state DIR]

Standard library only (the tools it starts are those next to this Python: ray, mlflow, moto_server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_STATE = HERE / ".multinode"
HEAD_IP = "127.0.0.2"
BUCKET = "deptune"
NODE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # `ray start --block` stops at once on SIGTERM
    # a lost node is declared dead within ~3 s instead of ~30 s (read by the head's GCS)
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
    "AWS_DEFAULT_REGION": "us-east-1",
}
DROPPED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
"""RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (a one-node local Ray's setting) makes Ray refuse other nodes."""


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free now (each socket held until all are chosen, so none is drawn twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def tool(name: str) -> str:
    """The console script next to this Python (the venv's ray, mlflow, moto_server)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"multinode: {name} not found next to {sys.executable}")
    return str(path)


@dataclass
class Node:
    name: str
    ip: str
    pid: int  # its process group and the root of its process tree
    ports: dict[str, int]


@dataclass
class Layout:
    """What `up` started, saved as <state>/cluster.json for `env` and `down`."""

    state: str
    token: str
    temp_dir: str
    ports: dict[str, int]
    services: dict[str, int] = field(default_factory=dict)  # name -> pid (moto, s3-proxy, mlflow)
    head: Node | None = None
    workers: list[Node] = field(default_factory=list)
    cpus: int = 2
    study_db: str | None = None
    mlflow_db: str | None = None
    private: list[str] = field(default_factory=list)
    next_ip: int = 3

    @classmethod
    def load(cls, state: Path) -> Layout:
        data = json.loads((state / "cluster.json").read_text())
        data["head"] = Node(**data["head"]) if data.get("head") else None
        data["workers"] = [Node(**w) for w in data["workers"]]
        return cls(**data)

    def save(self) -> None:
        path = Path(self.state) / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=1))
        path.chmod(0o600)


class MultiNodeCluster:
    """Start, fault and stop the cluster (see the module's docstring)."""

    def __init__(
        self,
        state: Path = DEFAULT_STATE,
        workers: int = 2,
        cpus: int = 2,
        study_db: str | None = None,
        mlflow_db: str | None = None,
        private: list[str] | None = None,
    ) -> None:
        self.state = Path(state).resolve()
        self.n_workers, self.cpus, self.private = workers, cpus, list(private or [])
        self.study_db, self.mlflow_db = study_db, mlflow_db
        self.layout: Layout | None = None

    # ----- addresses and the environment clients need --------------------------------------------------------
    @property
    def gcs_address(self) -> str:
        return f"{HEAD_IP}:{self.layout.ports['gcs']}"

    @property
    def dashboard(self) -> str:
        return f"http://{HEAD_IP}:{self.layout.ports['dashboard']}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.layout.ports['mlflow']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.layout.ports['s3']}"

    @property
    def study_storage(self) -> str:
        return self.study_db or f"sqlite:///{self.state / 'study.db'}"

    def node_env(self) -> dict[str, str]:
        """The environment of every Ray process of the cluster (head, workers, jobs, trials)."""
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        env.update(
            NODE_ENV,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.layout.token,
            AWS_ACCESS_KEY_ID="deptune-test",
            AWS_SECRET_ACCESS_KEY="deptune-test",
            AWS_ENDPOINT_URL=self.s3_endpoint,
            MLFLOW_TRACKING_URI=self.mlflow_uri,
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return env

    def client_env(self) -> dict[str, str]:
        """What a user's shell needs to submit jobs (`ray job submit`) or run a driver on the head."""
        return {**self.node_env(), "RAY_ADDRESS": self.dashboard, "DEPTUNE_STUDY_STORAGE": self.study_storage}

    # ----- up ------------------------------------------------------------------------------------------------
    def up(self, timeout_s: float = 180) -> MultiNodeCluster:
        if (self.state / "cluster.json").exists():
            raise SystemExit(f"multinode: a cluster is recorded in {self.state}; run `down` first")
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o700)
        self.layout = Layout(
            state=str(self.state),
            token=secrets.token_hex(32),
            temp_dir=tempfile.mkdtemp(prefix="deptune-mn-", dir="/tmp"),  # short: unix sockets
            ports=dict(zip(("gcs", "dashboard", "client", "moto", "s3", "mlflow"), free_ports(6))),
            cpus=self.cpus,
            study_db=self.study_db,
            mlflow_db=self.mlflow_db,
            private=self.private,
        )
        self.layout.save()
        try:
            self._start_storage()
            self._start_mlflow()
            self.layout.head = self._start_head()
            self.layout.save()
            for _ in range(self.n_workers):
                self.add_node(wait=False)
            self.wait_nodes(1 + self.n_workers, timeout_s)
            self._wait_http(f"{self.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout_s)
        except BaseException:
            self.down()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        log = open(self.state / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv,
            env=env or self.node_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.state,
        )
        log.close()
        return process.pid

    def _start_storage(self) -> None:
        ports = self.layout.ports
        self.layout.services["moto"] = self._spawn(
            "moto", [tool("moto_server"), "-H", "127.0.0.1", "-p", str(ports["moto"])]
        )
        self.layout.services["s3-proxy"] = self._spawn(
            "s3-proxy",
            [sys.executable, __file__, "proxy", "--listen", str(ports["s3"]), "--target", str(ports["moto"])],
        )
        self.layout.save()
        deadline = time.monotonic() + 60
        while True:  # moto creates a bucket on an unsigned PUT
            try:
                urllib.request.urlopen(urllib.request.Request(f"{self.s3_endpoint}/{BUCKET}", method="PUT"), timeout=5)
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start: {self._log_tail('moto')}") from None
                time.sleep(0.3)

    def _mlflow_argv(self) -> list[str]:
        store = self.mlflow_db or f"sqlite:///{self.state / 'mlflow.db'}"
        if store.startswith("postgresql://"):  # MLflow wants the psycopg 3 dialect spelled out (no psycopg2)
            store = store.replace("postgresql://", "postgresql+psycopg://", 1)
        return [
            tool("mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.layout.ports["mlflow"]),
            "--backend-store-uri",
            store,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.state / "mlartifacts"),
            "--workers",
            "1",
        ]

    def _start_mlflow(self) -> None:
        no_jobs = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # deptune runs no MLflow server jobs
        self.layout.services["mlflow"] = self._spawn("mlflow", self._mlflow_argv(), {**self.node_env(), **no_jobs})
        self.layout.save()

    def _ray_ports(self, head: bool) -> list[str]:
        names = (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
        taken = {*self.layout.ports.values()}
        ports = dict(zip(names, [p for p in free_ports(len(names) + len(taken)) if p not in taken][: len(names)]))
        first = 20000 + 400 * (self.layout.next_ip - 2)  # disjoint worker-port ranges: the nodes share one host
        return [f"--{k}={v}" for k, v in ports.items()] + [
            f"--min-worker-port={first}",
            f"--max-worker-port={first + 399}",
        ]

    def _start_head(self) -> Node:
        ports = self.layout.ports
        argv = [
            tool("ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus=0",
            f"--node-ip-address={HEAD_IP}",
            f"--port={ports['gcs']}",
            f"--dashboard-host={HEAD_IP}",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client']}",
            f"--temp-dir={self.layout.temp_dir}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            *self._ray_ports(head=True),
        ]
        return Node("head", HEAD_IP, self._spawn("head", argv), {})

    def add_node(self, wait: bool = True, timeout_s: float = 120) -> Node:
        """A worker node on the next loopback address (a replacement, too: a new node with a new id)."""
        layout = self.layout
        ip, name = f"127.0.0.{layout.next_ip}", f"worker{layout.next_ip - 2}"
        ray = shlex.join(
            [
                tool("ray"),
                "start",
                "--block",
                f"--address={self.gcs_address}",
                f"--node-ip-address={ip}",
                f"--num-cpus={layout.cpus}",
                "--object-store-memory=200000000",
                "--disable-usage-stats",
                *self._ray_ports(head=False),
            ]
        )
        hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        code_under_tmp = self._code_under_tmp()
        # The host's /tmp stays reachable at /mnt (in this namespace only) while a private tmpfs covers /tmp,
        # so the code that lies under /tmp is bound back from it, read-only. (A bind from /proc/<pid>/root/tmp
        # after the tmpfs mount found the new, empty /tmp instead: the nodes of a clone in /tmp never started.)
        lines = ["set -e", *(["mount --bind /tmp /mnt"] if code_under_tmp else [])]
        lines.append("mount -t tmpfs -o mode=1777 deptune-private /tmp")
        for code in code_under_tmp:
            stashed = shlex.quote("/mnt" + code.removeprefix("/tmp"))
            lines.append(f"mkdir -p {shlex.quote(code)} && mount --bind -o ro {stashed} {shlex.quote(code)}")
        if code_under_tmp:
            lines.append("umount -l /mnt")
        for private in [hf_home, *layout.private]:
            lines.append(f"mkdir -p {shlex.quote(private)} && mount -t tmpfs deptune-private {shlex.quote(private)}")
        lines.append(f"exec {ray}")
        node = Node(
            name,
            ip,
            self._spawn(name, ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)]),
            {},
        )
        layout.next_ip += 1
        layout.workers.append(node)
        layout.save()
        if wait:
            self.wait_nodes(1 + sum(1 for w in layout.workers if _alive(w.pid)), timeout_s)
        return node

    @staticmethod
    def _code_under_tmp() -> list[str]:
        """This Python's environment and the repository, where they lie under /tmp (a fresh clone); one inside
        the other (the repository's `.venv`) is bound with it: a second bind would mkdir in a read-only one."""
        paths = sorted(p for p in {sys.prefix, str(HERE.parents[1])} if p == "/tmp" or p.startswith("/tmp/"))
        return [p for p in paths if not any(p.startswith(outer.rstrip("/") + "/") for outer in paths)]

    # ----- looking at it -------------------------------------------------------------------------------------
    def _get(self, url: str, timeout: float = 10) -> dict:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.layout.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def nodes(self) -> list[dict]:
        """Ray's view of its nodes (the state API): node_id, node_ip, state (ALIVE | DEAD), resources_total."""
        return self._get(f"{self.dashboard}/api/v0/nodes?limit=1000&detail=true")["data"]["result"]["result"]

    def actors(self, class_name: str) -> list[dict]:
        """Ray's record of the actors of a class, alive and dead: actor_id, node_id, state, pid."""
        query = f"limit=1000&detail=true&filter_keys=class_name&filter_predicates=%3D&filter_values={class_name}"
        return self._get(f"{self.dashboard}/api/v0/actors?{query}")["data"]["result"]["result"]

    def node_ip(self, node_id: str) -> str:
        return next(n["node_ip"] for n in self.nodes() if n["node_id"] == node_id)

    def node_ids(self, ip: str) -> set[str]:
        return {n["node_id"] for n in self.nodes() if n["node_ip"] == ip}

    def wait_nodes(self, alive: int, timeout_s: float = 120) -> list[dict]:
        deadline, found = time.monotonic() + timeout_s, []
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, KeyError, ValueError):
                found = [n for n in self.nodes() if n["state"] == "ALIVE"]
                if len(found) == alive:
                    return found
            time.sleep(0.5)
        raise TimeoutError(
            f"{len(found)} of {alive} Ray nodes alive after {timeout_s} s:\n"
            + "".join(self._log_tail(n.name) for n in [self.layout.head, *self.layout.workers])
        )

    def wait_dead(self, ip: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while any(n["state"] == "ALIVE" for n in self.nodes() if n["node_ip"] == ip):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray still counts the node on {ip} alive after {timeout_s} s")
            time.sleep(0.3)

    def _wait_http(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} not answering after {timeout_s} s") from None
                time.sleep(0.3)

    def _log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.state / f"{name}.log"
        return f"\n--- {name}.log\n" + (path.read_text(errors="replace")[-chars:] if path.exists() else "(none)")

    # ----- faults --------------------------------------------------------------------------------------------
    def kill_node(self, name: str) -> Node:
        """SIGKILL every process of a worker node, its raylet included (a machine lost, not a clean stop)."""
        node = next(w for w in self.layout.workers if w.name == name)
        _kill_tree(node.pid, signal.SIGKILL)
        return node

    @contextlib.contextmanager
    def storage_outage(self) -> Iterator[None]:
        """S3 refuses connections (its objects stay) until the block ends."""
        proxy = self.layout.services["s3-proxy"]
        os.kill(proxy, signal.SIGUSR1)
        try:
            yield
        finally:
            os.kill(proxy, signal.SIGUSR2)

    @contextlib.contextmanager
    def tracking_outage(self) -> Iterator[None]:
        """The MLflow server is stopped until the block ends, then started again on the same port and store."""
        _kill_tree(self.layout.services["mlflow"], signal.SIGKILL)
        try:
            yield
        finally:
            self._start_mlflow()
            self._wait_http(f"{self.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1", 120)

    # ----- down ----------------------------------------------------------------------------------------------
    def down(self) -> list[int]:
        """Stop every process `up` started (workers, head, then the services); the pids that had to be killed."""
        if self.layout is None:
            return []
        roots = [w.pid for w in self.layout.workers] + ([self.layout.head.pid] if self.layout.head else [])
        roots += list(self.layout.services.values())
        trees = {root: _tree(root) for root in roots}
        for root in roots:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(root, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while any(_alive(p) for tree in trees.values() for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = [p for tree in trees.values() for p in tree if _alive(p)]
        for root in roots:
            _kill_tree(root, signal.SIGKILL)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", self.layout.temp_dir], check=False)
        (self.state / "cluster.json").unlink(missing_ok=True)
        self.layout = None
        return killed

    @classmethod
    def attach(cls, state: Path = DEFAULT_STATE) -> MultiNodeCluster:
        layout = Layout.load(Path(state).resolve())
        cluster = cls(
            Path(layout.state), len(layout.workers), layout.cpus, layout.study_db, layout.mlflow_db, layout.private
        )
        cluster.layout = layout
        return cluster


# ----- processes ------------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _tree(root: int) -> list[int]:
    """`root` and every live process below it (a job's driver runs in a session of its own, but under it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _alive(pid):
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _kill_tree(root: int, sig: int) -> None:
    for pid in _tree(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, sig)


# ----- the S3 proxy: moto behind a switch ----------------------------------------------------------------------
def proxy(listen: int, target: int) -> None:
    """Forward 127.0.0.1:listen to 127.0.0.1:target; SIGUSR1 closes the port and every connection (S3 is
    away: connections are refused), SIGUSR2 opens it again."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def main() -> None:
        loop, tasks, state = asyncio.get_running_loop(), set(), {"server": None}

        async def handle(reader, writer) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            pair = {asyncio.ensure_future(pipe(reader, up_writer)), asyncio.ensure_future(pipe(up_reader, writer))}
            tasks.update(pair)
            await asyncio.wait(pair)
            tasks.difference_update(pair)

        async def open_port() -> None:
            state["server"] = await asyncio.start_server(handle, "127.0.0.1", listen, reuse_address=True)

        async def close_port() -> None:
            if state["server"] is not None:
                state["server"].close()
                state["server"] = None
            for task in list(tasks):
                task.cancel()

        loop.add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(close_port()))
        loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(open_port()))
        await open_port()
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("up", "env", "down"):
        p = sub.add_parser(command)
        p.add_argument("--state", type=Path, default=DEFAULT_STATE)
        if command == "up":
            p.add_argument("--workers", type=int, default=2)
            p.add_argument("--cpus", type=int, default=2, help="logical CPUs of each worker node")
            p.add_argument("--study-db", help="the Optuna study's database URL (default: sqlite in the state folder)")
            p.add_argument(
                "--mlflow-db",
                help="MLflow's backend store URL, e.g. PostgreSQL in a schema of its own "
                "(default: sqlite in the state folder)",
            )
            p.add_argument("--private", action="append", default=[], help="a folder hidden from the workers")
    p = sub.add_parser("proxy")
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--target", type=int, required=True)
    args = parser.parse_args()
    if args.command == "proxy":
        proxy(args.listen, args.target)
    elif args.command == "up":
        cluster = MultiNodeCluster(
            args.state, args.workers, args.cpus, args.study_db, args.mlflow_db, args.private
        ).up()
        print(
            f"Ray head {cluster.gcs_address} (jobs: {cluster.dashboard}), {args.workers} worker node(s); "
            f"S3 {cluster.s3_endpoint} (bucket {BUCKET}); MLflow {cluster.mlflow_uri}\n"
            f'next: eval "$({sys.executable} {__file__} env --state {cluster.state})"'
        )
    elif args.command == "env":
        env = MultiNodeCluster.attach(args.state).client_env()
        keys = [k for k in env if k not in os.environ or os.environ[k] != env[k] or k.startswith(("RAY_", "AWS_"))]
        print("\n".join(f"export {k}={shlex.quote(env[k])}" for k in sorted(keys)))
    else:
        try:
            cluster = MultiNodeCluster.attach(args.state)
        except FileNotFoundError:
            print(f"multinode: no cluster recorded in {args.state}")
            return
        killed = cluster.down()
        print("stopped" + (f" (killed {len(killed)} process(es) that ignored SIGTERM)" if killed else ""))


if __name__ == "__main__":
    main()
