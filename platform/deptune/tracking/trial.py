"""A trial's child run, written by the trial's rank 0 (its Tune actor, or rank 0 of its Ray Train worker
group), so metrics are logged where they are made, on whichever node that is. Every write goes into the
run's journal on the sweep's storage, which the sweep driver reads and sends (`tracking.journal`)."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deptune.methods.config import lr_key
from deptune.storage import Folder, join
from deptune.tracking.journal import RunJournal
from deptune.tracking.store import TAG
from deptune.train.config import IMPROVED_AT, RESUMED_FROM
from deptune.train.spec import RunSpec

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
STATE_TAG = f"{TAG}state"  # COMPLETE | PRUNED | FAIL: what the study says (MLflow's run statuses are fixed)
ONCE = ("trainable_params", "examples_train", "examples_validation", "examples_test", "torch_threads")
"""Reported with every evaluation, constant through a run: logged once, as params (a constant is no curve)."""
PER_EVAL = "objective_per_eval"
"""The MLflow name of the objective at each evaluation: `best_objective` (the best so far, what the study
ranks) is the headline metric, the per-evaluation curve sits beside it under this name. Tune, ASHA and
the study still see the reported `objective`."""
SUMMARY_STEP = 0
"""End-of-run figures (test scores, seconds) are logged once at step 0: a run summary (the UI draws a
single-point metric as a bar), not a lone point at the last training step."""
RENAMED = {"objective": PER_EVAL}


@dataclass(frozen=True)
class TrialTracking:
    """What the sweep driver hands every trial: plain data, pickled through Tune."""

    uri: str
    experiment_id: str
    parent_run_id: str
    journal_root: str  # where each trial's journal folder goes: on the sweep's storage, read by the driver
    tags: dict[str, str]  # the execution's: sweep, study, git commit, spec hash, dataset fingerprint
    objective: str = "objective"  # the sweep's objective metric (as trials report it) and its mode
    mode: str = "max"


@dataclass(frozen=True)
class PublishedTracking:
    """A sweep's `TrialTracking` that the driver publishes once its MLflow parent run is open, so that the
    trial actors start (a fresh process's imports, seconds) while the driver opens MLflow, not after it.
    The file lies next to the Tune experiment on Ray's storage (a local folder or any URI pyarrow opens),
    where every node reads it; a trial waits for it when it first needs its tracking, once per process."""

    storage: str  # the folder (or URI) of the Tune experiment
    name: str  # the file in it
    timeout_s: float = 600.0

    @property
    def path(self) -> str:
        return join(self.storage, self.name)

    def publish(self, tracking: TrialTracking) -> None:
        Folder(self.storage).write(self.name, json.dumps(dataclasses.asdict(tracking)).encode())

    def resolve(self) -> TrialTracking:
        if self.path not in _RESOLVED:
            folder = Folder(self.storage)
            deadline = time.monotonic() + self.timeout_s
            while not folder.exists(self.name):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the sweep driver did not publish its MLflow tracking at {self.path} "
                        f"within {self.timeout_s:.0f} s"
                    )
                time.sleep(0.05)
            _RESOLVED[self.path] = TrialTracking(**json.loads(folder.read(self.name)))
        return _RESOLVED[self.path]


_RESOLVED: dict[str, TrialTracking] = {}  # this process's published trackings, by path


def mlflow_metrics(
    metrics: dict[str, float], objective: str = "objective", mode: str = "max", best: float | None = None
) -> tuple[dict[str, float], dict[str, float], float | None]:
    """An evaluation's report as MLflow names it: (curves at the step, end-of-run summary, best so far).

    `best_objective`/`best_step` are the best value of the sweep's objective so far (the loop's own when the
    objective is the task's first metric); `objective` becomes `objective_per_eval`; test scores are summary."""
    curves = {
        RENAMED.get(k, k): v
        for k, v in metrics.items()
        if k not in ("step", "best_objective", "best_step", IMPROVED_AT, RESUMED_FROM)
        and k not in ONCE
        and not k.startswith("test_")
    }
    summary = {k: v for k, v in metrics.items() if k.startswith("test_")}
    value = metrics.get(objective)
    if objective == "objective" and "best_objective" in metrics:
        best = float(metrics["best_objective"])
        curves.update(best_objective=best, best_step=float(metrics["best_step"]))
    elif value is not None and math.isfinite(value):
        if best is None or (value > best if mode == "max" else value < best):
            best = float(value)
            curves["best_step"] = float(metrics["step"])
        curves["best_objective"] = best
    headline = {k: curves.pop(k) for k in ("best_objective", "best_step") if k in curves}
    return {**headline, **curves}, summary, best  # first logged: the UI's compare view picks it by default


def trial_key(tracking: TrialTracking, ray_trial_id: str) -> dict[str, str]:
    """The tags that find a trial's run again (a restarted worker, the driver closing it)."""
    return {f"{TAG}ray_trial_id": ray_trial_id, PARENT_TAG: tracking.parent_run_id}


def readable(value: Any) -> Any:
    """A float as MLflow's tables should show it: 4 significant digits (0.0001530, not 0.00015299...); the
    study keeps the exact value."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def run_params(spec: RunSpec) -> dict[str, Any]:
    """A run's MLflow params: what the method says about itself, the learning rates it trains with (an
    encoder's head too), and the run's settings."""
    method, train = spec.method, spec.train
    return {
        **method.logged_params(),
        **{lr_key(group): readable(rate) for group, rate in spec.learning_rates().items()},  # lr_head: encoders' heads
        "task": spec.task.name,
        "backbone": spec.backbone.name,
        "backbone_revision": spec.backbone.revision or "default",
        "seed": train.seed,
        "batch_size": train.batch_size,
        "steps": train.steps,
        "workers": spec.resources.workers,
        "runner": spec.resources.resolved_runner,
    }


class TrialTracker:
    """Rank 0's logger (a report hook: called with each evaluation and, when it improved, its adapter):
    the run at start, then every evaluation and each improved adapter, into the trial's journal on the
    sweep's storage. Nothing here waits for MLflow: the driver sends the journal."""

    def __init__(self, tracking: TrialTracking, spec: RunSpec, ray_trial_id: str, optuna_trial: int | None) -> None:
        self.journal = RunJournal(join(tracking.journal_root, ray_trial_id), tracking.uri, send="driver")
        restarted = self.journal.exists()  # a restarted trial: the run exists (or is journaled)
        self.counted = restarted  # trainable_params is logged once, at the first evaluation
        self.objective, self.mode, self.best = tracking.objective, tracking.mode, None
        self.logged = set(self.journal.logged_metrics())  # a restart re-reports steps after its checkpoint
        if restarted:
            return
        name = f"trial-{optuna_trial:03d}" if optuna_trial is not None else f"trial-{ray_trial_id}"
        self.journal.start(
            tracking.experiment_id,
            name,
            find_by=trial_key(tracking, ray_trial_id),
            tags={
                **tracking.tags,
                f"{TAG}role": "trial",
                f"{TAG}optuna_trial": str(optuna_trial),
                f"{TAG}backbone_revision": spec.backbone.revision or "default",
                STATE_TAG: "RUNNING",
                NOTE_TAG: f"{name}: running",
            },
        )
        self.journal.params(run_params(spec))
        with tempfile.TemporaryDirectory(prefix="deptune-spec-") as tmp:
            (Path(tmp) / "run_spec.json").write_text(spec.model_dump_json(indent=2))
            self.journal.artifacts(tmp, "spec")

    def __call__(self, metrics: dict[str, float], adapter_dir: Path | None) -> None:
        step = int(metrics["step"])
        if step in self.logged:  # retrained after a restart from an earlier checkpoint: logged once already
            return
        self.logged.add(step)
        if not self.counted and "trainable_params" in metrics:  # known once the model and data are loaded
            self.journal.params({k: int(metrics[k]) for k in ONCE if k in metrics})
            self.counted = True
        curves, summary, self.best = mlflow_metrics(metrics, self.objective, self.mode, self.best)
        self.journal.metrics(curves, step)
        if summary:
            self.journal.metrics(summary, SUMMARY_STEP)
        if adapter_dir is not None:  # copied into the journal: the checkpoint folder may go at once
            self.journal.artifacts(adapter_dir, "adapter", skip=("train_state.pt",))


@dataclass(frozen=True)
class TrackerHook:
    """A sweep trial's `rank0_hook`: picklable, builds the tracker inside the trial's process."""

    tracking: TrialTracking
    ray_trial_id: str
    optuna_trial: int | None

    def __call__(self, spec: RunSpec) -> TrialTracker:
        return TrialTracker(self.tracking, spec, self.ray_trial_id, self.optuna_trial)
