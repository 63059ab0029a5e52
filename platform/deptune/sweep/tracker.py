"""The driver's side of tracking: the execution's parent run, each trial's final status, and at the end the
leaderboard, plots, summary and the registered best adapter.

Trials write their own child runs (`tracking.trial`); the driver closes each one as the study records it:
COMPLETE -> FINISHED, PRUNED (stopped by ASHA) -> KILLED, FAIL -> FAILED with the reason as a tag.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from deptune.spec_base import private_dir, redact
from deptune.sweep.config import SEARCH_KEYS, SweepSpec
from deptune.sweep.leaderboard import ranked_rows
from deptune.sweep.study import Execution, spec_hash
from deptune.tasks.loading import dataset_fingerprint
from deptune.registry import promotion as registry
from deptune.tracking.journal import RunJournal, flush_all, journal_path
from deptune.tracking.plots import write_plots
from deptune.sweep.space import SearchPlan
from deptune.sweep.study import storage_url
from deptune.tracking.store import TAG, ensure_experiment
from deptune.tracking.trial import TrialTracking, run_params, trial_key

STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def git_commit() -> str:
    """The code's commit: $DEPTUNE_GIT_COMMIT (a job's working dir has no .git), else git, else unknown."""
    if os.environ.get("DEPTUNE_GIT_COMMIT"):
        return os.environ["DEPTUNE_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class SweepOutcomeTracking:
    parent_run_id: str
    promotion: registry.Promotion | None
    not_logged: list[str] = field(default_factory=list)  # journals still holding writes, with their paths


class SweepTracker:
    def __init__(self, spec: SweepSpec, uri: str, execution: Execution, study: optuna.Study,
                 plan: SearchPlan | None = None) -> None:
        self.spec, self.uri, self.execution, self.study, self.plan = spec, uri, execution, study, plan
        self.experiment_id = ensure_experiment(uri, spec.tracking.experiment or study.study_name)
        # the journals hold every write before MLflow has it: this user's only
        self.journal_dir = private_dir((spec.train.output_dir / "mlflow-journal").resolve()) / execution.name
        self.parent = RunJournal(journal_path(self.journal_dir, "parent"), uri)
        self.tags = {f"{TAG}sweep": execution.name, f"{TAG}study": study.study_name,
                     f"{TAG}execution": str(execution.number), f"{TAG}git_commit": git_commit(),
                     f"{TAG}spec_hash": spec_hash(spec), f"{TAG}dataset_fingerprint": dataset_fingerprint(spec.task)}

    def open_parent(self, spec_file: str | None) -> str | None:
        """Create (or, on --resume, find) the execution's parent run; its id once the server took it."""
        if not self.parent.path.exists():
            self.parent.start(self.experiment_id, self.execution.name, find_by={f"{TAG}sweep": self.execution.name,
                                                                              f"{TAG}role": "sweep"},
                              tags={**self.tags, f"{TAG}role": "sweep"})
            params = {k: v for k, v in run_params(self.spec.base_run()).items() if k not in SEARCH_KEYS}
            sweep = self.spec.sweep
            self.parent.params({**params, "trials": sweep.trials, "max_concurrent": sweep.max_concurrent,
                                "objective": f"{sweep.objective.metric}:{sweep.objective.mode}",
                                "second_objective": (f"{sweep.second_objective.metric}:{sweep.second_objective.mode}"
                                                     if sweep.second_objective else None),
                                "scheduler": sweep.scheduler.name, "grace_period": self.spec.grace_period,
                                "sampler_seed": self.execution.seed,
                                "search": json.dumps(self.plan.effective_search()) if self.plan else None})
            if spec_file and Path(spec_file).is_file():
                folder = self.journal_dir / "parent-files" / "spec"
                folder.mkdir(parents=True, exist_ok=True)
                # the spec as written, but with its secrets (a study URL's password, ...) masked
                text = Path(spec_file).read_text(encoding="utf-8")
                (folder / Path(spec_file).name).write_text(redact(text), encoding="utf-8")
                self.parent.artifacts(folder, "spec")
        else:
            self.parent.tags({f"{TAG}resumed": "true"})
        return self.parent.run_id

    def trial_tracking(self) -> TrialTracking:
        return TrialTracking(uri=self.uri, experiment_id=self.experiment_id, parent_run_id=self.parent.run_id or "",
                             journal_dir=str(self.journal_dir), tags={**self.tags,
                                                                      "mlflow.parentRunId": self.parent.run_id or ""})

    def finish_trial(self, trial: FrozenTrial) -> None:
        """Close the trial's child run with the study's verdict (creating it if the trial never got to)."""
        ray_id = trial.user_attrs.get("ray_trial_id")
        if ray_id is None or trial.state not in STATUS or not self.parent.run_id:
            return
        tracking = self.trial_tracking()
        journal = RunJournal(journal_path(self.journal_dir, f"{ray_id}.final"), self.uri)
        if journal.path.exists():
            return
        journal.start(self.experiment_id, f"trial-{trial.number:03d}", find_by=trial_key(tracking, ray_id),
                      tags={**tracking.tags, f"{TAG}role": "trial", f"{TAG}optuna_trial": str(trial.number)})
        if not journal_path(self.journal_dir, ray_id).exists():  # rank 0 never started: the run is ours
            journal.params({"prompt_length": trial.user_attrs.get("prompt_length"),
                            "rank": trial.user_attrs.get("rank"), **trial.params})
        reason = trial.user_attrs.get("fail_reason") or trial.user_attrs.get("stop_reason")
        journal.tags({f"{TAG}optuna_state": trial.state.name, **({f"{TAG}reason": reason} if reason else {})})
        costs = {k: trial.user_attrs[k] for k in ("cpu_seconds", "gpu_seconds", "wall_seconds")
                 if k in trial.user_attrs}
        if costs:
            costs["accelerator_seconds"] = costs.get("gpu_seconds") or costs.get("cpu_seconds", 0.0)
            journal.metrics(costs, int(trial.user_attrs.get("last_step", 0)))
        journal.end(STATUS[trial.state])

    def finish(self, interrupted: bool) -> SweepOutcomeTracking:
        """Close every trial, write the parent's leaderboard, plots and summary, register the best adapter."""
        mine = [t for t in self.study.get_trials(deepcopy=False)
                if t.user_attrs.get("execution") == self.execution.number]
        for trial in mine:
            self.finish_trial(trial)
        promotion, problems = None, []
        if not interrupted and self.spec.tracking.register_best:
            try:
                promotion = self._register_best(mine)
            except Exception as exc:  # noqa: BLE001 -- the sweep's results stand; registration can be redone
                problems.append(f"registering the best adapter failed ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); redo it with "
                                f"`deptune promote RUN_ID --model ...`")
        self._parent_files()
        self._summary(mine, promotion)
        self.parent.end("KILLED" if interrupted else "FINISHED")
        return SweepOutcomeTracking(self.parent.run_id or "", promotion,
                                    problems + flush_all(self.journal_dir, self.uri))

    def _register_best(self, trials: list[FrozenTrial]) -> registry.Promotion | None:
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            return None
        objective = self.spec.sweep.objective
        best = (max if objective.mode == "max" else min)(complete, key=lambda t: t.values[0])
        run_id = RunJournal(journal_path(self.journal_dir, f"{best.user_attrs['ray_trial_id']}.final"), self.uri).run_id
        if run_id is None:
            return None
        name = self.spec.tracking.registered_model or f"deptune-{self.spec.task.name}-{self.spec.method.name}"
        lock_url = os.environ.get(registry.LOCK_ENV) or storage_url(self.spec)
        return registry.promote(run_id, name, metric=objective.metric, mode=objective.mode, uri=self.uri,
                                lock_url=lock_url, lineage={f"{TAG}optuna_value": repr(best.values[0])})

    def _parent_files(self) -> None:
        folder = self.journal_dir / "parent-files" / "results"
        folder.mkdir(parents=True, exist_ok=True)
        rows = ranked_rows(self.study)
        if rows:
            with (folder / "leaderboard.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        write_plots(self.study, folder / "plots")
        self.parent.artifacts(folder, None)

    def _summary(self, trials: list[FrozenTrial], promotion: registry.Promotion | None) -> None:
        counts = {state: sum(t.state == state for t in trials) for state in STATUS}
        summary = {"trials_completed": counts[TrialState.COMPLETE], "trials_stopped": counts[TrialState.PRUNED],
                   "trials_failed": counts[TrialState.FAIL],
                   "cpu_seconds": sum(t.user_attrs.get("cpu_seconds", 0.0) for t in trials),
                   "gpu_seconds": sum(t.user_attrs.get("gpu_seconds", 0.0) for t in trials)}
        summary["accelerator_seconds"] = summary["gpu_seconds"] or summary["cpu_seconds"]
        complete = [t.values[0] for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            summary["best_objective"] = (max if self.spec.sweep.objective.mode == "max" else min)(complete)
        self.parent.metrics(summary, self.execution.number)
        if promotion is not None:
            self.parent.tags({f"{TAG}registered_version": promotion.uri,
                              f"{TAG}champion": str(promotion.champion).lower()})

