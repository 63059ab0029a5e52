"""A run's MLflow writes, journaled on local disk before they are sent.

Training must not wait for, or die with, the tracking server. Every write (start the run, params,
metrics at a step, an artifact folder, tags, the end status) is appended to a JSON-lines journal first,
then sent in order; what the server could not take stays in the journal and is sent by the next write,
or by `flush_all` at the end of the sweep, which lists whatever is still unsent and where it is.
Re-sending after a crash may repeat a metric point; it never loses one.

Who sends a journal (`send`):
- "now": the writer, before the write returns (the driver's own runs).
- "driver": the sweep driver's `DriverSender`, for trials on the driver's node. The trial process only
  appends to the file: no MLflow import (a second in a fresh trial actor, and it holds the GIL that the
  trial's first load needs), no round trip per write, no stall while the server is down. The driver has
  MLflow open and sits idle while trials train; it sends a trial's journal in full before closing its run.
- "thread": the writer's process-wide `Sender` thread (a trial on another node, in a Tune actor that
  outlives it); the trial drains it when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

# A server that is down should cost a trial seconds, not MLflow's default minutes of retries per write.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # MLflow parses it as an int
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

log = logging.getLogger(__name__)
SUFFIX = ".journal.jsonl"
BY_DRIVER = ".driver"
"""Beside a journal that its writer leaves to the sweep driver to send (`send="driver"`)."""


def _tag_filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


class RunJournal:
    """The journal of one MLflow run at `path`; `start` names how to find the run again after a restart.
    `send`: who sends its writes (see the module's docstring)."""

    def __init__(self, path: str | Path, uri: str, send: Literal["now", "driver", "thread"] = "now") -> None:
        self.path = Path(path)
        self.state_path = self.path.with_suffix(".state.json")
        self.uri = uri
        self.send = send
        self.last_error: str | None = None
        self._file_lock = threading.Lock()  # a sender thread reads the file while the trial appends to it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if send == "driver":
            self.path.with_suffix(BY_DRIVER).touch()

    # ----- writes --------------------------------------------------------------------------------------
    def start(self, experiment_id: str, run_name: str, find_by: dict[str, str], tags: dict[str, str]) -> None:
        """Find the run tagged `find_by` (a restarted trial) or create it."""
        self._record({"op": "start", "experiment_id": experiment_id, "run_name": run_name, "find_by": find_by,
                      "tags": {**tags, **find_by}})

    def params(self, params: dict[str, Any]) -> None:
        self._record({"op": "params", "params": {k: str(v) for k, v in params.items() if v is not None}})

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._record({"op": "metrics", "metrics": numbers, "step": int(step), "timestamp": int(time.time() * 1000)})

    def tags(self, tags: dict[str, Any]) -> None:
        self._record({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self._record({"op": "artifacts", "local_dir": str(local_dir), "artifact_path": artifact_path})

    def end(self, status: str) -> None:
        self._record({"op": "end", "status": status})

    @property
    def run_id(self) -> str | None:
        return self._state().get("run_id")

    def logged_metrics(self) -> dict[int, dict[str, float]]:
        """Every metric point journaled (sent or not), by step, the first write of a step winning, with the
        write's time (ms) under "timestamp_ms": what the run's history holds or will hold once sent."""
        steps: dict[int, dict[str, float]] = {}
        for op in self._ops():
            if op["op"] == "metrics" and op["step"] not in steps:
                steps[op["step"]] = {**op["metrics"], "timestamp_ms": op["timestamp"]}
        return steps

    def pending(self) -> int:
        return len(self._ops()) - self._state().get("sent", 0)

    # ----- sending -------------------------------------------------------------------------------------
    def flush(self) -> bool:
        """Send what is unsent, in order; False (and `last_error`) if the server did not take it all."""
        state, ops = self._state(), self._ops()
        if state.get("sent", 0) >= len(ops):
            return True
        from mlflow import MlflowClient
        client = MlflowClient(tracking_uri=self.uri)
        try:
            for op in ops[state.get("sent", 0):]:
                state = self._apply(client, op, state)
                state["sent"] = state.get("sent", 0) + 1
                self._save_state(state)
        except Exception as exc:  # noqa: BLE001 -- any failure to reach MLflow leaves the op journaled
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            log.warning("MLflow write kept in %s for later: %s", self.path, self.last_error)
            return False
        self.last_error = None
        return True

    def _apply(self, client, op: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Metric, Param, RunTag
        kind, run_id = op["op"], state.get("run_id")
        if kind == "start":
            found = client.search_runs([op["experiment_id"]], filter_string=_tag_filter(op["find_by"]), max_results=1)
            run_id = found[0].info.run_id if found else client.create_run(
                op["experiment_id"], tags=op["tags"], run_name=op["run_name"]).info.run_id
            return {**state, "run_id": run_id}
        if run_id is None:
            raise RuntimeError("the journal has no run to write to (no start op)")
        if kind == "params":
            client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in op["params"].items()])
        elif kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, v, op["timestamp"], op["step"])
                                              for k, v in op["metrics"].items()])
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in op["tags"].items()])
        elif kind == "artifacts":
            client.log_artifacts(run_id, op["local_dir"], op["artifact_path"])
        elif kind == "end":
            client.set_terminated(run_id, op["status"])
        return state

    # ----- the files -----------------------------------------------------------------------------------
    def _record(self, op: dict[str, Any]) -> None:
        with self._file_lock, self.path.open("a") as journal:
            journal.write(json.dumps(op) + "\n")
        if self.send == "now":
            self.flush()
        elif self.send == "thread":
            TRIAL_SENDER.submit(self)

    def _ops(self) -> list[dict[str, Any]]:
        """The complete lines only: another process may be appending the last one."""
        with self._file_lock:
            if not self.path.is_file():
                return []
            text = self.path.read_text()
        return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]

    def _state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_path)


class Sender:
    """One thread that flushes the journals submitted to it, each once per batch of writes, in the order
    each journal recorded them. A flush that fails leaves its writes journaled for the next write (or
    `flush_all`) to send; the thread goes on with the others."""

    def __init__(self) -> None:
        self._due: dict[Path, RunJournal] = {}
        self._sending = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, journal: RunJournal) -> None:
        with self._changed:
            self._due[journal.path] = journal
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._send, name="deptune-journal-sender", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted has been tried; False if `timeout_s` ran out first (the rest is
        still sent by the thread, and stays journaled on disk until it is)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._due or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _send(self) -> None:
        while True:
            with self._changed:
                while not self._due:
                    self._changed.wait()
                _, journal = self._due.popitem()
                self._sending += 1
            try:
                journal.flush()
            except Exception:  # noqa: BLE001 -- a journal that cannot even be read must not stop the others
                log.exception("sending %s failed", journal.path)
            finally:
                with self._changed:
                    self._sending -= 1
                    self._changed.notify_all()


TRIAL_SENDER = Sender()
"""This process's sender thread for `send="thread"` journals."""


_DRIVER_SENDS = threading.Lock()  # one send at a time in a driver: its thread's, or an ended trial's


def send_for_driver(path: Path, uri: str) -> bool:
    """Send the journal at `path` if its writer left it to the driver; True once nothing of it is unsent."""
    if not path.with_suffix(BY_DRIVER).exists():
        return True
    with _DRIVER_SENDS:
        return RunJournal(path, uri).flush()


class DriverSender:
    """The sweep driver's thread that sends, every `interval_s`, the journals its node's trials leave to it
    in `directory`. A journal whose send failed (the server is away) is tried again after `retry_s`."""

    def __init__(self, directory: str | Path, uri: str, interval_s: float = 0.5, retry_s: float = 10.0) -> None:
        self.directory, self.uri, self.interval_s, self.retry_s = Path(directory), uri, interval_s, retry_s
        self._failed: dict[Path, float] = {}
        self._sent_size: dict[Path, int] = {}  # a journal that has not grown since it was sent is skipped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deptune-driver-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then send what is left once (until a send fails: the server is away, and the
        rest stays journaled for `flush_all` or `deptune sync`)."""
        self._stop.set()
        self._thread.join()  # a send in flight is bounded by MLflow's request timeout and retries
        for mark in sorted(self.directory.glob(f"*{BY_DRIVER}")):
            if not self._send(mark.with_suffix(".jsonl")):
                break

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for mark in sorted(self.directory.glob(f"*{BY_DRIVER}")):
                path = mark.with_suffix(".jsonl")
                if self._stop.is_set():
                    break
                if time.monotonic() - self._failed.get(path, -self.retry_s) >= self.retry_s \
                        and self._size(path) != self._sent_size.get(path):
                    self._send(path)

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return -1

    def _send(self, path: Path) -> bool:
        size = self._size(path)
        try:
            sent = send_for_driver(path, self.uri)
        except Exception:  # noqa: BLE001 -- a journal that cannot be read must not stop the others
            log.exception("sending %s failed", path)
            sent = False
        if sent:
            self._failed.pop(path, None)
            self._sent_size[path] = size  # what it held before this send: all of it is sent now
        else:
            self._failed[path] = time.monotonic()
        return sent


def journal_path(directory: str | Path, name: str) -> Path:
    return Path(directory) / f"{name}{SUFFIX}"


def flush_all(directory: str | Path, uri: str) -> list[str]:
    """Send every journal under `directory`; one line per journal that still holds unsent writes."""
    left = []
    for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
        journal = RunJournal(path, uri)
        with _DRIVER_SENDS:  # never beside a driver's sender thread sending the same journal
            sent = journal.flush()
        if not sent:
            left.append(f"{journal.pending()} write(s) of run {journal.run_id or '(not created yet)'} kept in "
                        f"{path} ({journal.last_error})")
    return left
