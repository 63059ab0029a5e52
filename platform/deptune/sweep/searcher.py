"""Ray Tune's OptunaSearch, recording what a trial really did in the persistent study.

OptunaSearch alone tells Optuna a trial stopped by ASHA is COMPLETE with its truncated last score (which
misleads TPE), reports intermediate values by Tune iteration, and never says why a trial failed. Here:
- intermediate values are reported at the training step, so pruned trials carry their curves;
- a trial that stops before `train.steps` is PRUNED, one that errors is FAIL with the reason as a user
  attribute, a finished one is COMPLETE with its best objective over the run (the adapter kept is the
  best step's) and, in a multi-objective sweep, the mean of the second metric over its evaluations;
- every trial records m, r, its parameter counts, best step, adapter path and CPU/GPU-seconds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from deptune.sweep.config import SweepSpec
from deptune.sweep.trainable import DIVERGED, OPTUNA_TRIAL_KEY

log = logging.getLogger(__name__)
CHECKPOINT_PATH_KEY = "checkpoint_path"  # added to a report by Tune's TuneReportCallback


class StudySearcher(OptunaSearch):
    def __init__(self, spec: SweepSpec, space, study_name: str, storage, sampler, execution: int) -> None:
        objectives = spec.sweep.objectives
        metric = [o.metric for o in objectives]
        mode = [o.mode for o in objectives]
        super().__init__(space=space, metric=metric if len(metric) > 1 else metric[0],
                         mode=mode if len(mode) > 1 else mode[0], sampler=sampler, study_name=study_name,
                         storage=storage)
        self.objectives = [(o.metric, o.mode) for o in objectives]
        self.total_steps = spec.train.steps
        self.execution = execution
        res = spec.resources
        self.cpus = spec.sweep.driver_cpus + res.workers * res.cpus_per_worker
        self.gpus = res.workers * res.gpus_per_worker
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.awaiting_reason: set[str] = set()
        self.on_finished: Callable[[optuna.trial.FrozenTrial], None] | None = None  # e.g. close its MLflow run

    # ----- Tune's Searcher interface ---------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        seen = sum(1 for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished())
        config = super().suggest(trial_id)
        if not isinstance(config, dict):  # None (wait) or Searcher.FINISHED
            return config
        trial = self._ot_trials[trial_id]
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("execution", self.execution)
        trial.set_user_attr("seen_trials", seen)  # finished trials the sampler could learn from
        return {**config, OPTUNA_TRIAL_KEY: trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or "step" not in result:
            return
        self.history.setdefault(trial_id, []).append(
            {k: result.get(k) for k in (*(m for m, _ in self.objectives), "step", "time_total_s",
                                        CHECKPOINT_PATH_KEY, "trainable_params")})
        value = result.get(self.objectives[0][0])
        if len(self.objectives) == 1 and _finite(value):
            trial = self._ot_trials[trial_id]
            if int(result["step"]) not in self._study_trial(trial).intermediate_values:
                trial.report(float(value), int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if error:  # the reason arrives with the trial in `FailureReasons.on_trial_error`
            self.awaiting_reason.add(trial_id)
            return
        if result and result.get(DIVERGED) is not None:  # ended on purpose: a retry would diverge again
            self.fail(trial_id, divergence_reason(result))
            return
        seen = self.history.get(trial_id, [])
        if result and "step" in result and not any(r["step"] == result["step"] for r in seen):
            self.on_trial_result(trial_id, result)  # a result the scheduler stopped on never reached on_trial_result
        trial = self._ot_trials[trial_id]
        if self._study_trial(trial).state.is_finished():  # told by an execution that was then interrupted
            self._completed_trials.add(trial_id)
            return
        self._record_costs(trial_id)
        rows = [r for r in self.history.get(trial_id, []) if _finite(r.get(self.objectives[0][0]))]
        if not rows:
            self._finish(trial_id, TrialState.FAIL, reason="no evaluation was reported")
        elif max(r["step"] for r in rows) < self.total_steps:
            trial.set_user_attr("stop_reason", f"stopped at step {int(rows[-1]['step'])} of {self.total_steps} "
                                               f"(ASHA or the time budget)")
            self._finish(trial_id, TrialState.PRUNED)
        else:
            self._finish(trial_id, TrialState.COMPLETE, values=self._values(rows))

    def save(self, checkpoint_path: str) -> None:
        """Tune pickles the searcher every few seconds; the finish hook (live state) stays out of it."""
        hook, self.on_finished = self.on_finished, None
        try:
            super().save(checkpoint_path)
        finally:
            self.on_finished = hook

    # ----- ours ------------------------------------------------------------------------------------------
    def fail(self, trial_id: str, reason: str) -> None:
        """Record a failed trial with its reason (called once Tune knows the trial's error)."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self.awaiting_reason.discard(trial_id)
        if self._study_trial(self._ot_trials[trial_id]).state.is_finished():
            self._completed_trials.add(trial_id)
            return
        self._record_costs(trial_id)
        self._finish(trial_id, TrialState.FAIL, reason=reason)

    def flush(self) -> None:
        for trial_id in list(self.awaiting_reason):
            self.fail(trial_id, "the trial raised an error (see the Tune trial's error.txt)")

    def _values(self, rows: list[dict[str, Any]]) -> list[float]:
        metric, mode = self.objectives[0]
        best = (max if mode == "max" else min)(float(r[metric]) for r in rows)
        values = [best]
        for metric, _ in self.objectives[1:]:
            seen = [float(r[metric]) for r in rows if _finite(r.get(metric))]
            values.append(sum(seen) / len(seen) if seen else math.nan)
        return values

    def _record_costs(self, trial_id: str) -> None:
        trial, rows = self._ot_trials[trial_id], self.history.get(trial_id, [])
        if not rows:
            return
        metric, mode = self.objectives[0]
        scored = [r for r in rows if _finite(r.get(metric))]
        best = (max if mode == "max" else min)(scored, key=lambda r: float(r[metric])) if scored else None
        wall = float(rows[-1].get("time_total_s") or 0.0)
        trial.set_user_attr("last_step", int(rows[-1]["step"]))
        trial.set_user_attr("wall_seconds", round(wall, 2))
        trial.set_user_attr("cpu_seconds", round(wall * self.cpus, 2))
        trial.set_user_attr("gpu_seconds", round(wall * self.gpus, 2))
        if rows[-1].get("trainable_params") is not None:
            trial.set_user_attr("trainable_params", int(rows[-1]["trainable_params"]))
        if best is not None:
            trial.set_user_attr("best_step", int(best["step"]))
            if best.get(CHECKPOINT_PATH_KEY):
                trial.set_user_attr("adapter_path", best[CHECKPOINT_PATH_KEY])

    def _finish(self, trial_id: str, state: TrialState, values: list[float] | None = None,
                reason: str | None = None) -> None:
        trial = self._ot_trials[trial_id]
        if reason:
            trial.set_user_attr("fail_reason", reason[:2000])
        self._ot_study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        self._completed_trials.add(trial_id)
        if self.on_finished is not None:
            self.on_finished(self._study_trial(trial))

    def _study_trial(self, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """The trial as the storage has it now (another execution may have finished it)."""
        return self._ot_study.get_trials(deepcopy=False)[trial.number]


def divergence_reason(result: dict) -> str:
    config = result.get("config") or {}
    rates = ", ".join(f"{k}={v:g}" for k, v in config.items() if k.startswith("lr_") and isinstance(v, float))
    return f"training diverged: non-finite loss at step {int(result[DIVERGED])}" + (f" ({rates})" if rates else "")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class FailureReasons(tune.Callback):
    """Hands each failed trial's error to the searcher: Tune tells the searcher a trial errored before it
    tells callbacks why."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error_file = trial.error_file  # written on the driver before callbacks run; storage gets it later
        text = Path(error_file).read_text() if error_file and Path(error_file).is_file() else ""
        self.searcher.fail(trial.trial_id, summarise_error(text) if text else "the trial raised an error")


def summarise_error(error: BaseException | str) -> str:
    """The root cause's last line: Tune wraps it in RayTaskError / TrainingFailedError layers."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (causes[-1] if causes else lines[-1] if lines else type(error).__name__)[:2000]
