"""What a run needs from the driver's disk, on a cluster whose other nodes do not share that disk.

A spec's local paths, by kind, decided once the driver is connected (`travel`) and before any trial:
- inside the Ray job's working directory (`ray job submit --working-dir .`): Ray unpacks that directory on
  every node and starts the job's workers in it, so such a path travels relative to it and each trial
  resolves it against its own node's copy (`arrive`);
- visible on every node as the driver sees it (a shared mount: NFS, a volume on every pod): kept as it is.
  A probe task on each of the other alive nodes compares the files' names, sizes and first bytes with the
  driver's;
- otherwise data files and a source adapter (`task.data_dir`, `task.files`, `method.init_from`, at most
  `SHIP_LIMIT` bytes together) travel in Ray's object store, and are written once per node, in its temp
  folder, where a trial needs them;
- anything else (a local backbone folder some node does not see, more data than `SHIP_LIMIT`) is refused
  before any trial starts, with its key path and what a cluster needs instead; so is Ray's storage
  (`train.storage_path`, default under `output_dir`) unless every node reaches it (a URI, a shared mount).
On a one-node Ray (the local one deptune starts) every path is visible and nothing is probed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deptune.spec_base import SpecError

SHIP_LIMIT = 256 * 2**20
Kind = Literal["data", "adapter", "backbone"]
HEAD_BYTES = 65536  # of each file, hashed by the probe: a stale copy of the same size differs there


@dataclass(frozen=True)
class LocalPath:
    key: str  # the spec's key path, e.g. task.files.train, source_tasks.1.data_dir
    kind: Kind
    path: Path  # absolute, as the driver sees it


@dataclass(frozen=True)
class Shipment:
    """Files that travel in the object store: each shipped key's files under its own folder."""

    ref: Any  # ray.ObjectRef of {relative file path: bytes}
    digest: str
    folders: dict[str, str] = field(default_factory=dict)  # key -> its folder in the shipment
    files: dict[str, str] = field(default_factory=dict)  # key -> the file within its folder (a file key)


def local_paths(spec: Any) -> list[LocalPath]:
    """Every local path a run of `spec` reads (made absolute against the driver's working directory)."""
    found: list[LocalPath] = []
    tasks = (
        [("task", spec.task)]
        if hasattr(spec, "task")
        else [(f"source_tasks.{i}", task) for i, task in enumerate(spec.source_tasks)]
    )
    for prefix, task in tasks:
        if task.data_dir is not None:
            found.append(LocalPath(f"{prefix}.data_dir", "data", Path(task.data_dir).absolute()))
        for split in ("train", "validation", "test"):
            if task.files is not None and getattr(task.files, split) is not None:
                found.append(LocalPath(f"{prefix}.files.{split}", "data", Path(getattr(task.files, split)).absolute()))
    init_from = getattr(spec.method, "init_from", None)
    if isinstance(init_from, Path):
        found.append(LocalPath("method.init_from", "adapter", init_from.absolute()))
    name = spec.backbone.name
    if name.startswith(("/", "./", "../")) or Path(name).is_dir():
        found.append(LocalPath("backbone.name", "backbone", Path(name).absolute()))
    return found


def fingerprint(path: str) -> list[tuple[str, int, str]] | None:
    """What a node sees at `path`: each file's relative name, size and a hash of its first bytes."""
    root = Path(path)
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    seen = []
    for file in files:
        with file.open("rb") as handle:
            head = hashlib.sha1(handle.read(HEAD_BYTES)).hexdigest()
        seen.append((file.relative_to(root).as_posix() if file != root else "", file.stat().st_size, head))
    return seen


def other_nodes() -> list[str]:
    """The alive nodes of the connected cluster other than this process's."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]


def _probe(paths: list[str], nodes: list[str], timeout_s: float = 120) -> dict[str, list]:
    """Each node's fingerprint of each path: {path: [fingerprint on node 1, ...]}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    look = ray.remote(num_cpus=0)(lambda ps: [fingerprint(p) for p in ps])
    refs = [
        look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(paths)
        for node in nodes
    ]
    seen = ray.get(refs, timeout=timeout_s)
    return {path: [node_view[i] for node_view in seen] for i, path in enumerate(paths)}


def job_working_dir() -> Path | None:
    """The driver's copy of its Ray job's `--working-dir`, if it runs in a job that has one."""
    import ray

    return Path.cwd() if ray.get_runtime_context().runtime_env.working_dir() else None


def storage_errors(spec: Any, nodes: list[str]) -> list[str]:
    """Ray's storage must be one every node reaches: a URI, or a folder shared by every node (a marker file
    the driver writes there must be seen by each)."""
    location = spec.train.ray_storage()
    if "://" in location:
        return []
    marker = Path(location) / f".deptune-shared-{os.getpid()}-{os.urandom(4).hex()}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(marker.name)
    try:
        mine, seen = fingerprint(str(marker)), _probe([str(marker)], nodes)[str(marker)]
    finally:
        marker.unlink(missing_ok=True)
    if all(view == mine for view in seen):
        return []
    key = "train.storage_path" if spec.train.storage_path else "train.output_dir"
    return [
        f"{key}: Ray's storage {location} is on the driver's disk, and {sum(v is None for v in seen)} of the "
        f"cluster's {len(nodes)} other node(s) do not see it: checkpoints, Tune's state and the trials' "
        f"records must be where every node reaches them: set train.storage_path to s3://bucket/path (the "
        f"nodes' environment giving its endpoint and credentials) or to a folder every node mounts"
    ]


def travel(spec: Any, source: str) -> tuple[Any, Shipment | None]:
    """The spec the trials get, and what travels with it (see the module's docstring); a `SpecError`
    names every path a trial could not reach, and a storage that is not shared."""
    nodes = other_nodes()
    if not nodes:
        return spec, None
    if errors := storage_errors(spec, nodes):
        raise SpecError(source, errors)
    entries = local_paths(spec)
    if not entries:
        return spec, None
    workdir = job_working_dir()
    relative = {e.key: e.path.relative_to(workdir) for e in entries if workdir and e.path.is_relative_to(workdir)}
    rest = [e for e in entries if e.key not in relative]
    views = _probe([str(e.path) for e in rest], nodes) if rest else {}
    ship, errors = [], []
    for entry in rest:
        mine = fingerprint(str(entry.path))
        if all(view == mine for view in views[str(entry.path)]):
            continue  # shared storage: every node sees the same files
        size = sum(size for _, size, _ in mine or [])
        missing = sum(view is None for view in views[str(entry.path)])
        where = (
            f"{missing} of the cluster's {len(nodes)} other node(s) do not see it"
            if missing
            else "other nodes see different files there"
        )
        if entry.kind == "backbone":
            errors.append(
                f"{entry.key}: {entry.path} is on the driver's disk ({where}); on a cluster give a hub "
                f"name, a folder every node mounts, or one inside the job's --working-dir"
            )
        elif size > SHIP_LIMIT:
            errors.append(
                f"{entry.key}: {entry.path} is on the driver's disk ({where}) and holds "
                f"{size / 2**20:.0f} MB, more than the {SHIP_LIMIT // 2**20} MB that travel with a run; "
                f"put it on storage every node mounts, or inside the job's --working-dir"
            )
        else:
            ship.append(entry)
    if sum(sum(s for _, s, _ in fingerprint(str(e.path)) or []) for e in ship) > SHIP_LIMIT:
        errors.append(
            f"{', '.join(e.key for e in ship)}: together more than the {SHIP_LIMIT // 2**20} MB that "
            f"travel with a run; put the data on storage every node mounts"
        )
    if errors:
        raise SpecError(source, errors)
    return with_paths(spec, {k: Path(v) for k, v in relative.items()}), pack(ship)


def pack(entries: list[LocalPath]) -> Shipment | None:
    if not entries:
        return None
    import ray

    content: dict[str, bytes] = {}
    folders, files = {}, {}
    for i, entry in enumerate(entries):
        folder = f"{i}-{entry.key}"
        folders[entry.key] = folder
        if entry.path.is_file():
            files[entry.key] = entry.path.name
            content[f"{folder}/{entry.path.name}"] = entry.path.read_bytes()
        else:
            for file in sorted(p for p in entry.path.rglob("*") if p.is_file()):
                content[f"{folder}/{file.relative_to(entry.path).as_posix()}"] = file.read_bytes()
    digest = hashlib.sha256()
    for name in sorted(content):
        digest.update(name.encode() + b"\0" + hashlib.sha256(content[name]).digest())
    return Shipment(ray.put(content), digest.hexdigest()[:16], folders, files)


def arrive(spec: Any, shipment: Shipment | None) -> Any:
    """In a trial: relative paths resolved against the job's working directory on this node (Tune moves a
    trial into its own folder and names the original in TUNE_ORIG_WORKING_DIR), shipped files written to
    this node's temp folder once and the spec pointed at them."""
    from deptune.spec_base import absolute_paths

    spec = absolute_paths(spec, Path(os.environ.get("TUNE_ORIG_WORKING_DIR") or os.getcwd()))
    return with_paths(spec, unpack(shipment)) if shipment is not None else spec


def unpack(shipment: Shipment) -> dict[str, Path]:
    """The shipment's files on this node (written once per node), by the key each one stands for."""
    root = Path(tempfile.gettempdir()) / "deptune-shipped" / shipment.digest
    if not root.is_dir():
        import shutil

        import ray

        root.parent.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=f"{shipment.digest}-", dir=root.parent))
        for name, data in ray.get(shipment.ref).items():
            (aside / name).parent.mkdir(parents=True, exist_ok=True)
            (aside / name).write_bytes(data)
        try:
            aside.rename(root)  # another trial on this node may have written it first: theirs stands
        except OSError:
            shutil.rmtree(aside, ignore_errors=True)
    return {
        key: root / folder / shipment.files[key] if key in shipment.files else root / folder
        for key, folder in shipment.folders.items()
    }


def with_paths(spec: Any, updates: dict[str, Path]) -> Any:
    """`spec` with the fields at these key paths replaced (sub-models copied, never re-validated)."""
    for key, value in updates.items():
        spec = _set(spec, key.split("."), str(value) if key == "backbone.name" else value)
    return spec


def _set(node: Any, parts: list[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        items = list(node)
        items[int(head)] = _set(items[int(head)], rest, value) if rest else value
        return items
    child = getattr(node, head)
    return node.model_copy(update={head: _set(child, rest, value) if rest else value})
