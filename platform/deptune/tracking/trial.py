"""A trial's child run, written by rank 0 of the trial's Ray Train worker group, so metrics are logged
where they are made, on whichever node that is. Every write goes through the run's journal."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deptune.train.spec import RunSpec
from deptune.tracking.journal import RunJournal, journal_path
from deptune.tracking.store import TAG

PARENT_TAG = "mlflow.parentRunId"
ONCE = ("trainable_params", "examples_train", "examples_validation", "examples_test")
"""Reported with every evaluation, logged once as params (trainable_params also stays a metric)."""


@dataclass(frozen=True)
class TrialTracking:
    """What the sweep driver hands every trial: plain data, pickled through Tune."""

    uri: str
    experiment_id: str
    parent_run_id: str
    journal_dir: str
    tags: dict[str, str]  # the execution's: sweep, study, git commit, spec hash, dataset fingerprint


def trial_key(tracking: TrialTracking, ray_trial_id: str) -> dict[str, str]:
    """The tags that find a trial's run again (a restarted worker, the driver closing it)."""
    return {f"{TAG}ray_trial_id": ray_trial_id, PARENT_TAG: tracking.parent_run_id}


def run_params(spec: RunSpec) -> dict[str, Any]:
    """A run's MLflow params: what the method says about itself, the learning rates it trains with (an
    encoder's head too), and the run's settings."""
    method, train = spec.method, spec.train
    rates = (*method.learning_rates, "lr_head")  # lr_head: used by encoders' classification heads
    return {**method.logged_params(), **{key: getattr(train, key) for key in rates},
            "task": spec.task.name, "backbone": spec.backbone.name,
            "backbone_revision": spec.backbone.revision or "default", "seed": train.seed,
            "batch_size": train.batch_size, "steps": train.steps, "workers": spec.resources.workers}


class TrialTracker:
    """Rank 0's logger: the run at start, then every evaluation and each improved adapter."""

    def __init__(self, tracking: TrialTracking, spec: RunSpec, ray_trial_id: str, optuna_trial: int | None) -> None:
        self.folder = Path(tracking.journal_dir) / ray_trial_id
        self.journal = RunJournal(journal_path(tracking.journal_dir, ray_trial_id), tracking.uri)
        self.counted = self.journal.path.exists()  # trainable_params is logged once, at the first evaluation
        if self.journal.path.exists():  # a restarted worker group: the run exists (or is journaled)
            return
        name = f"trial-{optuna_trial:03d}" if optuna_trial is not None else f"trial-{ray_trial_id}"
        self.journal.start(tracking.experiment_id, name, find_by=trial_key(tracking, ray_trial_id),
                           tags={**tracking.tags, f"{TAG}role": "trial", f"{TAG}optuna_trial": str(optuna_trial),
                                 f"{TAG}backbone_revision": spec.backbone.revision or "default"})
        self.journal.params(run_params(spec))
        spec_dir = self.folder / "spec"
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "run_spec.json").write_text(spec.model_dump_json(indent=2))
        self.journal.artifacts(spec_dir, "spec")

    def log_evaluation(self, metrics: dict[str, float], adapter_dir: Path | None) -> None:
        step = int(metrics["step"])
        if not self.counted and "trainable_params" in metrics:  # known once the model and data are loaded
            self.journal.params({k: int(metrics[k]) for k in ONCE if k in metrics})
            self.counted = True
        self.journal.metrics({k: v for k, v in metrics.items() if k != "step" and k not in ONCE[1:]}, step)
        if adapter_dir is not None:  # a copy that outlives the checkpoint folder until it is sent
            kept = self.folder / "adapter"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(adapter_dir, kept, ignore=shutil.ignore_patterns("train_state.pt"))
            self.journal.artifacts(kept, "adapter")


@dataclass(frozen=True)
class TrackerHook:
    """Ray Train's `rank0_hook` for a sweep trial: picklable, builds the tracker inside the worker."""

    tracking: TrialTracking
    ray_trial_id: str
    optuna_trial: int | None

    def __call__(self, spec: RunSpec):
        return TrialTracker(self.tracking, spec, self.ray_trial_id, self.optuna_trial).log_evaluation
