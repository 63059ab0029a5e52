"""The sweep talks to an `ExecutionTracker`, not to MLflow: a tracker defined here, registered in one line,
receives an execution's whole record from the sweep's side of tracking, over a real Optuna study.

No Ray and no MLflow server: the fast lane. The MLflow tracker itself is proved by every sweep test."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from optuna.trial import TrialState

from deptune.spec_base import SpecError
from deptune.specs import parse_spec
from deptune.sweep.config import SweepSpec
from deptune.sweep.study import load_study, open_storage, start_execution, storage_url
from deptune.sweep.tracker import SweepTracker, finish_unfinished, journal_dir_for
from deptune.tracking.base import ExecutionTracker, TrialRun, TrialVerdict
from deptune.tracking.catalog import register_tracker, tracker_class
from deptune.tracking.record import evaluations, recorded_trials
from deptune.tracking.trial import TrialTracker, TrialTracking

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


class MemoryTracker(ExecutionTracker):
    """Keeps what it is told in memory; `refuse` writes are kept back (a store that is away)."""

    name = "memory"
    opened: list[MemoryTracker] = []
    refuse = False

    def __init__(self, uri, experiment, identity, journal_dir, trial_records) -> None:
        super().__init__(uri, experiment, identity, journal_dir, trial_records)
        self.params: dict | None = None
        self.table: tuple | None = None
        self.closed: dict[str, TrialVerdict] = {}
        self.description, self.labels, self.summary, self.leaderboard = "", {}, {}, []
        self.ended: bool | None = None
        MemoryTracker.opened.append(self)

    @classmethod
    def resolve_uri(cls, configured: str | None) -> str:
        return configured or "memory://default"

    @classmethod
    def uri_problem(cls, uri: str) -> str | None:
        return None if uri.startswith("memory://") else "is no memory:// store"

    @classmethod
    def check_reachable(cls, uri: str, source: str) -> None:
        if problem := cls.uri_problem(uri):
            raise SpecError(source, [f"tracking.uri: {problem}"])

    @property
    def run_id(self) -> str | None:
        return f"execution-{self.identity.execution}" if self.params is not None or self.closed else None

    def open(self, params, description, spec_file) -> None:
        self.params, self.description = params, description

    def save_trials_table(self, params, metrics, sort_by, ascending) -> str | None:
        self.table = (params, metrics, sort_by, ascending)
        return "#trials-best-first"

    def trial_tracking(self, objective: str, mode: str) -> TrialTracking:
        return TrialTracking(
            self.uri, "memory", self.run_id or "", self.trial_records, self.identity.labels(), objective, mode
        )

    def close_trial(self, verdict: TrialVerdict) -> None:
        assert verdict.key not in self.closed, "a trial's run is closed once"
        self.closed[verdict.key] = verdict

    def trial_run(self, key: str) -> TrialRun | None:
        if key not in self.closed:
            return None
        return TrialRun(f"run-{key}", f"trial-{self.closed[key].number:03d}", f"memory://{key}/adapter", f"#{key}")

    def describe(self, description, labels=None) -> None:
        self.description, self.labels = description, {**self.labels, **(labels or {})}

    def log_summary(self, metrics, files: Path | None) -> None:
        self.summary = metrics
        with (files / "leaderboard.csv").open() as handle:
            self.leaderboard = list(csv.DictReader(handle))

    def end(self, interrupted: bool) -> None:
        self.ended = interrupted

    def send_all(self) -> list[str]:
        return [f"{self.journal_dir}: 3 writes"] if MemoryTracker.refuse else []

    def stop_sending(self) -> None:
        pass


register_tracker("memory", MemoryTracker)  # the one line that plugs a tracker in


@pytest.fixture
def memory_sweep(tmp_path):
    MemoryTracker.opened, MemoryTracker.refuse = [], False
    spec = parse_spec(
        {
            "backbone": {"name": "tiny-bert"},
            "task": {"name": "synthetic", "synthetic_size": 64},
            "method": {"name": "dept", "max_length": 32, "budget": 12},
            "search": {"prompt_length": {"low": 2, "high": 10, "step": 2}},
            "train": {"steps": 12, "eval_every": 4, "warmup_steps": 2, "output_dir": str(tmp_path)},
            "sweep": {"trials": 3, "scheduler": {"name": "fifo"}},
            "study": {"name": "seam"},
            "tracking": {"tracker": "memory", "uri": "memory://here", "register_best": False},
        },
        kind=SweepSpec,
    )
    study = load_study(spec, open_storage(storage_url(spec)))
    execution = start_execution(spec, study)
    # three finished trials as the searcher records them: one complete, one stopped at step 4, one failed
    outcomes = [(TrialState.COMPLETE, {4: 0.6, 8: 0.8, 12: 0.7}), (TrialState.PRUNED, {4: 0.5}), (TrialState.FAIL, {})]
    for number, (state, curve) in enumerate(outcomes):
        trial = study.ask()
        trial.suggest_int("prompt_length", 2, 10, step=2)
        trial.suggest_float("lr_prompt", 0.3, 0.4)
        for key, value in {
            "execution": execution.number,
            "ray_trial_id": f"t{number}",
            "rank": 2,
            "cpu_seconds": 1.5,
            "wall_seconds": 2.0,
            "stop_reason": "stopped by ASHA at step 4",
            "fail_reason": "ValueError: diverged" if state == TrialState.FAIL else None,
            "best_step": 8 if state == TrialState.COMPLETE else None,
        }.items():
            if value is not None and (key != "stop_reason" or state == TrialState.PRUNED):
                trial.set_user_attr(key, value)
        for step, value in curve.items():
            trial.report(value, step)
        study.tell(trial, max(curve.values()) if state == TrialState.COMPLETE else None, state=state)
    return spec, study, execution


def test_a_registered_tracker_is_what_a_spec_names():
    assert tracker_class("memory") is MemoryTracker
    assert tracker_class("mlflow").__name__ == "MlflowExecutionTracker" and tracker_class("mlflow").model_registry
    with pytest.raises(ValueError, match="registered already"):
        register_tracker("mlflow", MemoryTracker)
    with pytest.raises(Exception, match=r"tracking.tracker.*no tracker named 'wandb'; registered: .*memory, mlflow"):
        parse_spec({"backbone": {"name": "tiny-bert"}, "tracking": {"tracker": "wandb"}}, kind=SweepSpec)


def test_the_sweep_records_an_execution_through_the_tracker_it_names(memory_sweep):
    spec, study, execution = memory_sweep
    tracker = SweepTracker(spec, "memory://here", execution, study)
    assert tracker.open_parent(None) == f"execution-{execution.number}"
    memory = tracker.tracker
    assert isinstance(memory, MemoryTracker) and memory.identity.study == "seam"
    assert memory.params["sampler"] == "tpe" and memory.params["trials"] == 3 and "prompt_length" not in memory.params
    assert memory.table == (
        ["prompt_length", "rank", "lr_prompt", "lr_lowrank", "lr_head", "trainable_params"],
        ["best_objective", "best_step", "stopped_at_step", "cpu_seconds"],
        "best_objective",
        False,
    )
    assert tracker.trial_tracking().parent_run_id == f"execution-{execution.number}"

    outcome = tracker.finish(interrupted=False)

    verdicts = memory.closed
    assert {k: v.state for k, v in verdicts.items()} == {"t0": "COMPLETE", "t1": "PRUNED", "t2": "FAIL"}
    assert (verdicts["t0"].best_value, verdicts["t0"].best_step) == (0.8, 8)
    assert (verdicts["t1"].best_value, verdicts["t1"].best_step) == (0.5, 4)
    assert verdicts["t1"].reason == "stopped by ASHA at step 4" and "not a failure" in verdicts["t1"].description
    assert verdicts["t2"].reason == "ValueError: diverged" and verdicts["t2"].best_value is None
    assert verdicts["t0"].costs == {"cpu_seconds": 1.5, "wall_seconds": 2.0}  # each figure once: no GPU-s here
    assert all(v.params["rank"] == 2 for v in verdicts.values())
    assert memory.summary == {
        "trials_completed": 1,
        "trials_stopped": 1,
        "trials_failed": 1,
        "cpu_seconds": 4.5,
        "best_objective": 0.8,
    }
    assert memory.labels == {"best_run_id": "run-t0", "best_trial": "0"}
    assert "Best trial: [trial-000](#t0), objective = 0.8." in memory.description
    assert "[Trials, best first](#trials-best-first)" in memory.description
    # objective and hyperparameters first; the rates the trials did not search are the spec's (head: 1e-3)
    assert list(memory.leaderboard[0])[:6] == [
        "objective",
        "prompt_length",
        "rank",
        "lr_head",
        "lr_lowrank",
        "lr_prompt",
    ]
    assert {(r["lr_head"], r["lr_lowrank"]) for r in memory.leaderboard} == {("0.001", "0.0001")}
    assert [(r["run_id"], r["state"], r["adapter_uri"]) for r in memory.leaderboard] == [
        ("run-t0", "COMPLETE", "memory://t0/adapter"),
        ("run-t1", "PRUNED", "memory://t1/adapter"),
        ("run-t2", "FAIL", "memory://t2/adapter"),
    ]
    assert memory.ended is False and outcome.parent_run_id == f"execution-{execution.number}"
    assert outcome.not_logged == [] and outcome.unfinished is None and outcome.promotion is None


def test_a_tracker_without_a_model_registry_says_the_best_adapter_is_not_registered(memory_sweep):
    spec, study, execution = memory_sweep
    spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"register_best": True})})
    tracker = SweepTracker(spec, "memory://here", execution, study)
    tracker.open_parent(None)
    outcome = tracker.finish(interrupted=False)
    assert outcome.promotion is None
    assert outcome.not_logged == [
        "tracking.register_best: the 'memory' tracker keeps no runs MLflow's Model Registry registers from; "
        "the best adapter is trial 0's"
    ]


def test_writes_the_store_did_not_take_wait_for_deptune_sync_which_finishes_the_execution(memory_sweep):
    spec, study, execution = memory_sweep
    MemoryTracker.refuse = True
    tracker = SweepTracker(spec, "memory://here", execution, study)
    tracker.open_parent(None)
    outcome = tracker.finish(interrupted=False)
    journal_dir = journal_dir_for(spec, execution)
    assert outcome.unfinished.endswith(f"run `deptune sync {journal_dir}`") and outcome.not_logged
    assert tracker.tracker.ended is None and tracker.tracker.summary == {}  # the end waits for the sync
    assert len(tracker.tracker.closed) == 3  # every trial's run is closed before

    assert finish_unfinished(journal_dir).unfinished  # the store still refuses: still waiting
    MemoryTracker.refuse = False
    synced = finish_unfinished(journal_dir)
    again = MemoryTracker.opened[-1]
    assert synced.unfinished is None and again.ended is False and again.summary["trials_completed"] == 1
    assert finish_unfinished(journal_dir) is None  # nothing waits any more


def test_the_record_a_trial_writes_reads_back_in_the_trials_own_words(tmp_path, memory_sweep):
    """What the searcher's backfill and ASHA read: the trial's reported names and steps, whatever the
    tracker stores them as (MLflow's `objective_per_eval`, its summary step)."""
    spec, _, _ = memory_sweep
    records = str(tmp_path / "records")
    tracking = TrialTracking("sqlite:///unused.db", "1", "parent", records, {}, "objective", "max")
    logger = TrialTracker(tracking, spec.base_run(), "t0", 0)
    logger({"step": 4, "objective": 0.5, "eval_accuracy": 0.5, "test_accuracy": 0.4, "trainable_params": 448}, None)
    logger({"step": 8, "objective": 0.7, "eval_accuracy": 0.7}, None)
    assert recorded_trials(records) == ["t0"]
    got = evaluations(records, "t0")
    assert sorted(got) == [4, 8]  # the test score's summary point is no evaluation
    assert got[4]["objective"] == 0.5 and got[8]["objective"] == 0.7 and "objective_per_eval" not in got[4]
    assert got[4]["trainable_params"] == 448 and got[4]["timestamp_ms"] <= got[8]["timestamp_ms"]


def test_a_spec_naming_the_tracker_is_checked_and_prepared_through_it(memory_sweep, tmp_path):
    """`deptune validate`'s checks and the prepared sweep ask the tracker for its URI's form, default and
    reachability; the prepared sweep resolves each URI once and hands it down."""
    from deptune import checks
    from deptune.sweep.driver import prepare_sweep

    spec, _, _ = memory_sweep
    checked = checks.check(spec, "spec.yaml")
    assert checked.tracking_uri == "memory://here" and checked.study_url == f"sqlite:///{tmp_path}/study.db"
    prepared = prepare_sweep(spec, "spec.yaml", plan=checked.plan, tracking_uri=checked.tracking_uri)
    assert (prepared.tracking_uri, prepared.study_url, prepared.plan) == (
        "memory://here",
        checked.study_url,
        checked.plan,
    )
    elsewhere = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": "http://127.0.0.1:1"})})
    with pytest.raises(SpecError, match=r"tracking.uri: http://127.0.0.1:1: is no memory:// store"):
        checks.check(elsewhere, "spec.yaml")
    with pytest.raises(SpecError, match=r"tracking.uri: is no memory:// store"):
        prepare_sweep(elsewhere, "spec.yaml", plan=checked.plan)
