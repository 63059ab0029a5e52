"""A run's MLflow writes, journaled on local disk before they are sent.

Training must not wait for, or die with, the tracking server. Every write (start the run, params,
metrics at a step, an artifact folder, tags, the end status) is appended to a JSON-lines journal first,
then sent in order; what the server could not take stays in the journal and is sent by the next write,
or by `flush_all` at the end of the sweep, which lists whatever is still unsent and where it is.
Re-sending after a crash may repeat a metric point; it never loses one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

# A server that is down should cost a trial seconds, not MLflow's default minutes of retries per write.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # MLflow parses it as an int
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

log = logging.getLogger(__name__)
SUFFIX = ".journal.jsonl"


def _tag_filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


class RunJournal:
    """The journal of one MLflow run at `path`; `start` names how to find the run again after a restart."""

    def __init__(self, path: str | Path, uri: str) -> None:
        self.path = Path(path)
        self.state_path = self.path.with_suffix(".state.json")
        self.uri = uri
        self.last_error: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)

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
        with self.path.open("a") as journal:
            journal.write(json.dumps(op) + "\n")
        self.flush()

    def _ops(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_path)


def journal_path(directory: str | Path, name: str) -> Path:
    return Path(directory) / f"{name}{SUFFIX}"


def flush_all(directory: str | Path, uri: str) -> list[str]:
    """Send every journal under `directory`; one line per journal that still holds unsent writes."""
    left = []
    for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
        journal = RunJournal(path, uri)
        if not journal.flush():
            left.append(f"{journal.pending()} write(s) of run {journal.run_id or '(not created yet)'} kept in "
                        f"{path} ({journal.last_error})")
    return left
