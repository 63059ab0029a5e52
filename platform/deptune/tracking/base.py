"""What the sweep layer asks of experiment tracking: one `ExecutionTracker` per sweep execution.

torchtune's `MetricLoggerInterface` is the model: the sweep says what happened in words of its own (a
trial's verdict, the execution's settings and summary, its files) and a tracker records it where it keeps
runs. `mlflow` (`tracking/mlflow_execution.py`) is the built-in one; a tracker is registered by name in
`tracking/catalog.py`. Trials write their evaluations into their records (`tracking.record`, read by the
searcher and ASHA in the trial's own words); the tracker takes them from there."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from deptune.tracking.trial import TrialTracking

TrialState = Literal["COMPLETE", "PRUNED", "FAIL"]
WAITING = "unfinished.json"
"""In an execution's journal folder while the tracker's store has not taken everything: what `deptune sync`
finishes."""


@dataclass(frozen=True)
class ExecutionIdentity:
    """What names an execution wherever it is tracked (each becomes a tag, or the like, on every run)."""

    sweep: str  # the execution's name (also the Tune experiment's)
    study: str
    execution: int
    git_commit: str
    spec_hash: str
    dataset_fingerprint: str

    def labels(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class TrialVerdict:
    """A finished trial as the study has it, for the tracker to close the trial's run with."""

    number: int
    key: str  # the id the trial records under (its Tune trial id)
    state: TrialState
    description: str  # what happened, in words (the run's description)
    params: dict[str, Any] = field(default_factory=dict)  # its values, for a run the trial never started
    best_value: float | None = None  # what the study ranks it on, and the step it came from
    best_step: int | None = None
    reason: str | None = None  # why it failed or was stopped
    costs: dict[str, float] = field(default_factory=dict)  # cpu_seconds, gpu_seconds, wall_seconds


@dataclass(frozen=True)
class TrialRun:
    """Where a trial's run is: its id (what `deptune promote` takes), name, adapter and a link to its page."""

    id: str
    name: str | None
    adapter_uri: str | None
    link: str


class ExecutionTracker(ABC):
    """The tracking of one execution. Every write may be kept back while the store is away (`send_all` says
    what is left, `deptune sync` sends it later): the sweep never waits for, or dies with, its tracker."""

    name: ClassVar[str]
    model_registry: ClassVar[bool] = False
    """Whether a trial's run id is one MLflow's Model Registry registers from (`tracking.register_best`)."""

    def __init__(
        self, uri: str, experiment: str, identity: ExecutionIdentity, journal_dir: Path, trial_records: str
    ) -> None:
        """`journal_dir`: the driver's own folder for what it writes; `trial_records`: where trials write
        theirs (the sweep's storage, which every node reaches)."""
        self.uri, self.experiment, self.identity = uri, experiment, identity
        self.journal_dir, self.trial_records = journal_dir, trial_records

    @classmethod
    @abstractmethod
    def resolve_uri(cls, configured: str | None) -> str:
        """The store `tracking.uri` names (its default when unset), absolute: trials run in other folders."""

    @classmethod
    @abstractmethod
    def uri_problem(cls, uri: str) -> str | None:
        """Why `uri` (resolved) names no store of this tracker, from its form alone; None when it may."""

    @classmethod
    @abstractmethod
    def check_reachable(cls, uri: str, source: str) -> None:
        """Raise a `SpecError` (key `tracking.uri`) unless the store answers, within seconds, before any Ray work."""

    @property
    @abstractmethod
    def run_id(self) -> str | None:
        """The execution's own (parent) run, once created."""

    @abstractmethod
    def open(self, params: dict[str, Any], description: str, spec_file: str | None) -> None:
        """Create the execution's run (or find it again on `--resume`) with its settings and spec file."""

    @abstractmethod
    def save_trials_table(self, params: list[str], metrics: list[str], sort_by: str, ascending: bool) -> str | None:
        """A saved table of the trials, best first, for the tracker's UI; its link, or None."""

    @abstractmethod
    def trial_tracking(self, objective: str, mode: str) -> TrialTracking:
        """What every trial gets (plain data, pickled through Tune) to record its run."""

    @abstractmethod
    def close_trial(self, verdict: TrialVerdict) -> None:
        """Close the trial's run with the study's verdict, once (creating the run if the trial never did)."""

    @abstractmethod
    def trial_run(self, key: str) -> TrialRun | None:
        """Where the trial recorded under `key` has its run (None: no run)."""

    @abstractmethod
    def describe(self, description: str, labels: dict[str, str] | None = None) -> None:
        """Set the execution run's description (and labels: the best trial, the registered version)."""

    @abstractmethod
    def log_summary(self, metrics: dict[str, float], files: Path | None) -> None:
        """The execution's summary figures and its files (leaderboard, plots)."""

    @abstractmethod
    def end(self, interrupted: bool) -> None:
        """Close the execution's run."""

    @abstractmethod
    def send_all(self) -> list[str]:
        """Send everything kept back; what the store did not take (each with where it waits)."""

    @abstractmethod
    def stop_sending(self) -> None:
        """Stop any background sending (what is left goes with `send_all`)."""

    def wait_for_sync(self, record: dict[str, Any]) -> str:
        """Keep `record` (what finishes the execution's tracking later) beside the kept-back writes; the
        command that finishes it."""
        self.journal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.journal_dir / WAITING).write_text(json.dumps({**record, "uri": self.uri}))
        return f"deptune sync {self.journal_dir}"

    def synced(self) -> None:
        """The execution's tracking is complete: nothing waits for a later sync."""
        (self.journal_dir / WAITING).unlink(missing_ok=True)


def waiting_record(journal_dir: Path) -> dict[str, Any] | None:
    """What an execution whose tracking waits for `deptune sync` left in `journal_dir` (None: nothing waits)."""
    marker = Path(journal_dir) / WAITING
    return json.loads(marker.read_text()) if marker.is_file() else None
