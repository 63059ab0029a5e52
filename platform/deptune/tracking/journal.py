"""A run's MLflow writes, journaled before they are sent.

Training must not wait for, or die with, the tracking server, and a trial's record must not live on one
node's disk. Each write (start the run, params, metrics at a step, an artifact folder, tags, the end
status) is one small file `ops/<n>.json` of the run's journal folder, written whole, then sent in order.
The folder is a local one or a folder on the sweep's shared storage (`s3://...`, `deptune.storage`), so a
trial on any node writes its journal and the driver, on another node, reads it. Who sends:
- the writer itself (`send="now"`, before the write returns): the driver's own runs, `deptune sync`;
- the sweep driver (`send="driver"`): every trial's run, wherever it trains. The trial only writes files:
  no MLflow import in a trial process, no round trip per write, no stall while the server is down. The
  driver's `DriverSender` thread sends what is new every 0.5 s, and a trial's journal in full before the
  driver closes its run.
An artifact folder is copied into the journal (`files/<n>/`), so the sender reads it from any node and the
writer may change its own copy at once; the copy goes once it is sent. How much was sent is kept in the
folder (`sent.json`), so a new driver continues where a dead one stopped. Re-sending after a crash may
repeat the last write: MLflow's SQL stores keep one copy of an identical metric point.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Literal

from deptune.storage import Folder

# A server that is down should cost a write seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # MLflow parses it as an int
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

log = logging.getLogger(__name__)
OPS, FILES, SENT = "ops", "files", "sent.json"


def _tag_filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


class RunJournal:
    """The journal of one MLflow run in the folder `location` (local or a storage URI); `start` names how
    to find the run again after a restart. One writer at a time (a trial runs in one place at a time), one
    sender (`send`: see the module's docstring)."""

    def __init__(self, location: str | Path, uri: str, send: Literal["now", "driver"] = "now") -> None:
        self.folder = Folder(location)
        self.location, self.uri, self.send = self.folder.location, uri, send
        self.last_error: str | None = None
        self._ops: dict[int, dict[str, Any]] = {}  # read once: a written op never changes
        self._written: int | None = None  # this writer's last op number

    def exists(self) -> bool:
        return self.folder.exists(OPS)

    # ----- writes --------------------------------------------------------------------------------------
    def start(self, experiment_id: str, run_name: str, find_by: dict[str, str], tags: dict[str, str]) -> None:
        """Find the run tagged `find_by` (a restarted trial) or create it."""
        self._record(
            {
                "op": "start",
                "experiment_id": experiment_id,
                "run_name": run_name,
                "find_by": find_by,
                "tags": {**tags, **find_by},
            }
        )

    def params(self, params: dict[str, Any]) -> None:
        self._record({"op": "params", "params": {k: str(v) for k, v in params.items() if v is not None}})

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._record({"op": "metrics", "metrics": numbers, "step": int(step), "timestamp": int(time.time() * 1000)})

    def tags(self, tags: dict[str, Any]) -> None:
        self._record({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def artifacts(self, local_dir: str | Path, artifact_path: str | None = None, skip: tuple[str, ...] = ()) -> None:
        """Log a folder's files (but `skip`); they are copied into the journal first."""
        number = self._next()
        with tempfile.TemporaryDirectory(prefix="deptune-artifacts-") as tmp:
            for file in Path(local_dir).rglob("*"):
                if file.is_file() and file.name not in skip:
                    target = Path(tmp) / file.relative_to(local_dir)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(file.read_bytes())
            self.folder.upload(tmp, f"{FILES}/{number:08d}")
        self._record({"op": "artifacts", "files": f"{FILES}/{number:08d}", "artifact_path": artifact_path}, number)

    def end(self, status: str) -> None:
        self._record({"op": "end", "status": status})

    # ----- what it holds -------------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self._state().get("run_id")

    def logged_metrics(self) -> dict[int, dict[str, float]]:
        """Every metric point journaled (sent or not), by step, the first write of a step winning, with the
        write's time (ms) under "timestamp_ms": what the run's history holds or will hold once sent."""
        steps: dict[int, dict[str, float]] = {}
        for op in self._read_ops():
            if op["op"] == "metrics" and op["step"] not in steps:
                steps[op["step"]] = {**op["metrics"], "timestamp_ms": op["timestamp"]}
        return steps

    def logged_params(self) -> dict[str, str]:
        """Every param journaled (sent or not), as logged."""
        params: dict[str, str] = {}
        for op in self._read_ops():
            if op["op"] == "params":
                params.update(op["params"])
        return params

    def pending(self) -> int:
        return len(self._numbers()) - self._state().get("sent", 0)

    # ----- sending -------------------------------------------------------------------------------------
    def flush(self) -> bool:
        """Send what is unsent, in order; False (and `last_error`) if the server did not take it all."""
        state = self._state()
        numbers = self._numbers()[state.get("sent", 0) :]
        if not numbers:
            return True
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        try:
            for number in numbers:
                state = self._apply(client, self._op(number), state)
                state["sent"] = state.get("sent", 0) + 1
                self.folder.write(SENT, json.dumps(state).encode())
        except Exception as exc:  # noqa: BLE001 -- any failure to reach MLflow leaves the op journaled
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            log.debug("MLflow write kept in %s for later: %s", self.location, self.last_error)  # said once by
            # the driver's sender, and listed at the end of the sweep
            return False
        self.last_error = None
        return True

    def _apply(self, client, op: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Metric, Param, RunTag

        kind, run_id = op["op"], state.get("run_id")
        if kind == "start":
            found = client.search_runs([op["experiment_id"]], filter_string=_tag_filter(op["find_by"]), max_results=1)
            run_id = (
                found[0].info.run_id
                if found
                else client.create_run(op["experiment_id"], tags=op["tags"], run_name=op["run_name"]).info.run_id
            )
            return {**state, "run_id": run_id}
        if run_id is None:
            raise RuntimeError("the journal has no run to write to (no start op)")
        if kind == "params":
            client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in op["params"].items()])
        elif kind == "metrics":
            client.log_batch(
                run_id, metrics=[Metric(k, v, op["timestamp"], op["step"]) for k, v in op["metrics"].items()]
            )
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in op["tags"].items()])
        elif kind == "artifacts":
            self._send_files(client, run_id, op)
        elif kind == "end":
            client.set_terminated(run_id, op["status"])
        return state

    def _send_files(self, client, run_id: str, op: dict[str, Any]) -> None:
        if not self.folder.exists(op["files"]):  # sent before a crash, its copy already gone
            return
        if self.folder.local:
            client.log_artifacts(run_id, os.path.join(self.folder.path, op["files"]), op["artifact_path"])
        else:
            with tempfile.TemporaryDirectory(prefix="deptune-artifacts-") as tmp:
                client.log_artifacts(run_id, str(self.folder.download(op["files"], tmp)), op["artifact_path"])
        self.folder.remove(op["files"])  # sent: the copy has done its work

    # ----- the files -----------------------------------------------------------------------------------
    def _next(self) -> int:
        if self._written is None:  # a restarted writer continues the numbering
            numbers = self._numbers()
            self._written = numbers[-1] if numbers else 0
        self._written += 1
        return self._written

    def _record(self, op: dict[str, Any], number: int | None = None) -> None:
        number = number if number is not None else self._next()
        self.folder.write(f"{OPS}/{number:08d}.json", json.dumps(op).encode())
        self._ops[number] = op
        if self.send == "now":
            self.flush()

    def _numbers(self) -> list[int]:
        return [int(name.removesuffix(".json")) for name in self.folder.files(OPS) if name.endswith(".json")]

    def _op(self, number: int) -> dict[str, Any]:
        if number not in self._ops:
            self._ops[number] = json.loads(self.folder.read(f"{OPS}/{number:08d}.json"))
        return self._ops[number]

    def _read_ops(self) -> list[dict[str, Any]]:
        return [self._op(n) for n in self._numbers()]

    def _state(self) -> dict[str, Any]:
        return json.loads(self.folder.read(SENT)) if self.folder.exists(SENT) else {}


_DRIVER_SENDS = threading.Lock()  # one send at a time in a driver: its thread's, or an ended trial's


def journals(location: str | Path) -> list[str]:
    """The journal folders directly in `location` (each trial's, the driver's)."""
    folder = Folder(location)
    return [folder.child(name).location for name in folder.folders() if folder.child(name).exists(OPS)]


class DriverSender:
    """The sweep driver's thread that sends, every `interval_s`, the trials' journals under `location`
    (wherever the trials ran: it is on the sweep's storage). A journal whose send failed (the server is
    away) is tried again after `retry_s`; the outage is said when it starts and when it ends."""

    def __init__(self, location: str | Path, uri: str, interval_s: float = 0.5, retry_s: float = 10.0) -> None:
        self.location, self.uri, self.interval_s, self.retry_s = str(location), uri, interval_s, retry_s
        self._journals: dict[str, RunJournal] = {}
        self._sent: dict[str, int] = {}  # trial folder -> ops it held when last sent whole
        self._failed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deptune-driver-sender", daemon=True)
        self._thread.start()
        _RUNNING_SENDERS.add(self)

    def journal(self, location: str) -> RunJournal:
        if location not in self._journals:
            self._journals[location] = RunJournal(location, self.uri, send="driver")
        return self._journals[location]

    def send(self, location: str) -> bool:
        """Send one trial's journal now (the driver closes its run next); True once nothing is left."""
        with _DRIVER_SENDS:
            return self.journal(location).flush()

    def stop(self) -> None:
        """Stop the thread, then send what is left once (until a send fails: the server is away, and the rest
        stays journaled for `flush_all` or `deptune sync`)."""
        self.halt()
        for location in journals(self.location):
            if not self.send(location):
                break

    def halt(self, timeout_s: float | None = None) -> None:
        """Stop the thread without sending; a send in flight is bounded by MLflow's request timeout."""
        self._stop.set()
        self._thread.join(timeout_s)
        _RUNNING_SENDERS.discard(self)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._failed_at is not None and time.monotonic() - self._failed_at < self.retry_s:
                continue
            try:
                self._send_new()
            except Exception:
                log.exception("sending the journals in %s failed", self.location)

    def _send_new(self) -> None:
        """One listing of the storage says which journals grew since they were last sent."""
        counts: dict[str, int] = {}
        for name in Folder(self.location).files():
            parts = name.split("/")
            if len(parts) == 3 and parts[1] == OPS:
                counts[parts[0]] = counts.get(parts[0], 0) + 1
        for trial, count in sorted(counts.items()):
            if self._stop.is_set() or self._sent.get(trial) == count:
                continue
            journal = self.journal(Folder(self.location).child(trial).location)
            if not self.send(journal.location):
                if self._failed_at is None:
                    log.warning(
                        "MLflow at %s unreachable (%s): the trials' writes stay journaled in %s and are "
                        "sent when it answers",
                        self.uri,
                        journal.last_error,
                        self.location,
                    )
                self._failed_at = time.monotonic()
                return
            self._sent[trial] = count
        if self._failed_at is not None:
            log.warning("MLflow at %s answers again: the trials' journaled writes are sent", self.uri)
            self._failed_at = None


_RUNNING_SENDERS: weakref.WeakSet[DriverSender] = weakref.WeakSet()


@atexit.register
def _halt_running_senders() -> None:
    """A driver that exits without `stop` (an error path, a caller that forgot) must not leave the thread
    listing the storage through pyarrow while the interpreter shuts down: a daemon thread inside pyarrow's
    C++ during finalization can crash the exiting process (a pytest run segfaulted so after all tests had
    passed). What is left unsent stays journaled for the next driver or `deptune sync`."""
    for sender in list(_RUNNING_SENDERS):
        sender.halt(timeout_s=5)


def flush_all(location: str | Path, uri: str) -> list[str]:
    """Send every journal in `location`; one line per journal that still holds unsent writes."""
    left = []
    for path in journals(location):
        journal = RunJournal(path, uri)
        with _DRIVER_SENDS:  # never beside a driver's sender thread sending the same journal
            sent = journal.flush()
        if not sent:
            left.append(
                f"{journal.pending()} write(s) of run {journal.run_id or '(not created yet)'} kept in "
                f"{path} ({journal.last_error})"
            )
    return left
