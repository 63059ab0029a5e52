"""A Ray Tune searcher of our own over Optuna's ask/tell, recording what a trial really did in the study.

Ray's OptunaSearch tells Optuna a trial stopped by ASHA is COMPLETE with its truncated score (which
misleads TPE), reports intermediate values by Tune iteration and never says why a trial failed; adapting
it meant reading its private attributes. Here, on public APIs only (`Searcher`, `study.ask`/`tell`,
`Trial.report`/`set_user_attr`, the storage's public methods):
- intermediate values are reported at the training step, so pruned trials carry their curves;
- a trial that stops before `train.steps` is PRUNED, one that errors is FAIL with the reason as a user
  attribute, a finished one (or one stopped on the last rung) is COMPLETE with its best objective (the
  adapter kept is the best step's) and, in a multi-objective sweep, the mean of the second metric over
  its evaluations;
- every trial records m, r, its parameter counts, best step, adapter path and CPU/GPU-seconds over all
  its runs (a trial resumed after a driver kill adds its second run to its first).

A trial's record is whole across restarts: before a trial is told, and for every trial when Tune restores
the searcher (`--resume`), the evaluations its rank 0 recorded (`tracking.record`) but Tune never delivered
(reported while the driver was dead, or in flight when ASHA stopped it) are added to the study, so the
study and the MLflow run hold the same steps. A stopped trial is told a few seconds after the stop, once
nothing more can arrive.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.search import Searcher

from deptune.cluster.fit import run_demand
from deptune.storage import uri_of
from deptune.sweep.config import SweepSpec
from deptune.sweep.space import SearchPlan
from deptune.sweep.study import open_storage, storage_trial_id
from deptune.sweep.trainable import DIVERGED, OPTUNA_TRIAL_KEY, RUN_KEY
from deptune.tracking.record import MADE_AT, evaluations
from deptune.train.config import RESUMED_FROM, SELECTED_BY

log = logging.getLogger(__name__)
CHECKPOINT_PATH_KEY = "checkpoint_path"  # added to a report by Tune's TuneReportCallback
STOP_GRACE_S = 5.0
"""How long after ASHA's stop a trial's workers may still log an evaluation (the actor is killed after)."""
LIVE = ("_study", "_storage", "_trials")  # the study connection: opened again after unpickling


class StudySearcher(Searcher):
    """Tune's searcher for one execution of the study. Its state (`get_state`) is plain data, saved by Tune
    every few seconds and restored by `--resume`; the study connection and the finish hook are live."""

    def __init__(
        self,
        spec: SweepSpec,
        plan: SearchPlan,
        study_name: str,
        storage_url: str,
        sampler: optuna.samplers.BaseSampler,
        execution: int,
        journal_root: str | None = None,
    ) -> None:
        primary = spec.sweep.objective
        super().__init__(metric=primary.metric, mode=primary.mode)
        self.objectives = [(o.metric, o.mode) for o in spec.sweep.objectives]
        self.total_steps = spec.train.steps
        self.demand = run_demand(spec.base_run(), spec.sweep.driver_cpus)
        self.plan, self.study_name, self.storage_url, self.sampler = plan, study_name, storage_url, sampler
        self.execution = execution
        self.runner = spec.resources.resolved_runner  # where trials train: recorded on each (leaderboard, report)
        self.journal_root = journal_root  # rank 0's MLflow journals (on the sweep's storage): what each logged
        self.storage = spec.train.ray_storage()  # checkpoints' paths are on its filesystem
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.history: dict[str, list[dict[str, Any]]] = {}  # every evaluation, once per step
        self.runs: dict[str, list[list[float]]] = {}  # per run of the trial: see `_time`
        self.done: set[str] = set()
        self.awaiting_reason: set[str] = set()
        self.stopping: dict[str, tuple[float, int]] = {}  # stopped (when, at which step), told after STOP_GRACE_S
        self.where: dict[str, dict[str, list]] = {}  # nodes each trial ran on, the step each of its runs began at
        self.run_ids: dict[str, str] = {}  # Tune id -> the id its journal and checkpoints go by, where they differ
        self.forgotten: list[tuple[int, str]] = []  # (number, run id) of trials Tune's restored state lacks
        self.on_finished: Callable[[FrozenTrial], None] | None = None  # e.g. close its MLflow run
        self._study: optuna.Study | None = None
        self._trials: dict[int, optuna.Trial] = {}

    # ----- live objects (never pickled) -----------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._storage = open_storage(self.storage_url)
            self._study = optuna.load_study(study_name=self.study_name, storage=self._storage, sampler=self.sampler)
        return self._study

    def _trial(self, trial_id: str) -> optuna.Trial:
        number = self.numbers[trial_id]
        if number not in self._trials:  # asked by an execution that was then interrupted
            self._trials[number] = optuna.Trial(self.study, storage_trial_id(self._storage, self.study_name, number))
        return self._trials[number]

    def _frozen(self, trial_id: str) -> FrozenTrial:
        """The trial as the storage has it now (another execution may have finished it)."""
        return self.study.get_trials(deepcopy=False)[self.numbers[trial_id]]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in LIVE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._study, self._trials = None, {}

    # ----- Tune's Searcher interface ---------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True  # the space is the plan's (define-by-run) and the objectives the spec's

    def suggest(self, trial_id: str) -> dict | None:
        if self.forgotten:  # a trial the dead driver started after Tune's last snapshot: the same trial again
            return self._again(trial_id, *self.forgotten.pop(0))
        seen = sum(1 for t in self.study.get_trials(deepcopy=False) if t.state.is_finished())
        trial = self.study.ask()  # an enqueued point first, else the sampler's
        self._trials[trial.number] = trial
        config = self.plan.suggest(trial)
        trial.set_user_attr("ray_trial_id", trial_id)
        trial.set_user_attr("execution", self.execution)
        trial.set_user_attr("runner", self.runner)
        trial.set_user_attr("seen_trials", seen)  # finished trials the sampler could learn from
        self.numbers[trial_id] = trial.number
        return {**config, OPTUNA_TRIAL_KEY: trial.number, RUN_KEY: trial_id}

    def _again(self, trial_id: str, number: int, run_id: str) -> dict:
        """The forgotten trial `number` under Tune's new id: the same parameters (Optuna hands a trial's own
        values back), the same journal and MLflow run, and its checkpoints under its first id (`RUN_KEY`)."""
        self.numbers[trial_id], self.run_ids[trial_id] = number, run_id
        self._take_up(trial_id)
        config = self.plan.suggest(self._trial(trial_id))
        return {**config, OPTUNA_TRIAL_KEY: number, RUN_KEY: run_id}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.done or trial_id not in self.numbers or "step" not in result:
            return
        self._time(trial_id, result)
        self._where(trial_id, result)
        if result.get(DIVERGED) is not None:  # a notice, not an evaluation
            return
        self._add(
            trial_id,
            {k: result.get(k) for k in (*self._kept_metrics(), "step", CHECKPOINT_PATH_KEY, "trainable_params")},
        )

    def checkpointed(self, trial_id: str, path: str, step: float | None) -> None:
        """Tune kept the checkpoint of the trial's evaluation at `step` (a trial in its Tune actor; a Ray Train
        run names its checkpoint in the report itself): where the adapter of that step is now (a step trained
        again after a restart has a new checkpoint)."""
        row = next((r for r in self.history.get(trial_id, []) if step is not None and r["step"] == int(step)), None)
        if trial_id not in self.done and row is not None:
            row[CHECKPOINT_PATH_KEY] = uri_of(self.storage, path)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.done or trial_id not in self.numbers:
            return
        if error:  # the reason arrives with the trial in `StudyEvents.on_trial_error`
            self.awaiting_reason.add(trial_id)
            return
        if result and "step" in result:  # a result the scheduler stopped on never reached on_trial_result
            self.on_trial_result(trial_id, result)
        if result and result.get(DIVERGED) is not None:  # ended on purpose: a retry would diverge again
            self.fail(trial_id, divergence_reason(result, self._frozen(trial_id).params))
            return
        steps = [r["step"] for r in self._scored(trial_id)]
        if steps and max(steps) < self.total_steps:  # stopped (ASHA, the time budget): PRUNED, told once its
            self.stopping.setdefault(trial_id, (time.time(), max(steps)))  # workers can log no more
            if not self.journal_root:
                self._settle(trial_id)
        else:
            self._settle(trial_id)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.get_state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """`--resume`: continue the same Optuna trials. Their workers died with the driver: what they logged
        meanwhile joins the record now, and the next result of each starts a new run (cost adds up)."""
        with open(checkpoint_path, "rb") as handle:
            self.set_state(pickle.load(handle))
        trials = self.study.get_trials(deepcopy=False)
        finished = {t.number for t in trials if t.state.is_finished()}
        known = set(self.numbers.values())
        self.forgotten = [
            (t.number, t.user_attrs["ray_trial_id"])
            for t in trials  # asked after the last snapshot
            if t.state == TrialState.RUNNING
            and t.user_attrs.get("execution") == self.execution
            and t.number not in known
            and "ray_trial_id" in t.user_attrs
        ]
        for trial_id in set(self.numbers) - self.done:
            if self.numbers[trial_id] in finished:  # told by the dead driver after Tune's last snapshot: its
                self.done.add(trial_id)  # results Tune delivers again change nothing
                continue
            self._take_up(trial_id)
        self.flush()

    def get_state(self) -> dict[str, Any]:
        state = self.__getstate__()
        state.pop("on_finished")  # live (the driver's tracker); a restored searcher keeps its own
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.__setstate__(state)

    # ----- ours ------------------------------------------------------------------------------------------

    def fail(self, trial_id: str, reason: str) -> None:
        """Record a failed trial with its reason (called once Tune knows the trial's error)."""
        if trial_id in self.done or trial_id not in self.numbers:
            return
        self.awaiting_reason.discard(trial_id)
        self._settle(trial_id, reason=reason)

    def settle_stopped(self, grace_s: float = STOP_GRACE_S) -> None:
        """Tell the study about trials stopped at least `grace_s` ago (their workers are gone by then)."""
        for trial_id, (since, _) in list(self.stopping.items()):
            if time.time() - since >= grace_s:
                self._settle(trial_id)

    def flush(self) -> None:
        """At the end of the experiment (or a restore): nothing more arrives for any trial."""
        self.settle_stopped(0.0)
        for trial_id in list(self.awaiting_reason):
            self.fail(trial_id, "the trial raised an error (see the Tune trial's error.txt)")

    def _settle(self, trial_id: str, reason: str | None = None) -> None:
        _, stopped_at = self.stopping.pop(trial_id, (None, None))
        if self._frozen(trial_id).state.is_finished():  # told by an execution that was then interrupted
            self.done.add(trial_id)
            return
        self._backfill(trial_id)
        self._record_costs(trial_id)
        rows = self._scored(trial_id)
        if reason is not None:
            self._finish(trial_id, TrialState.FAIL, reason=reason)
        elif not rows:
            self._finish(trial_id, TrialState.FAIL, reason="no evaluation was reported")
        elif stopped_at is not None or max(r["step"] for r in rows) < self.total_steps:
            last = max(stopped_at or 0, max(r["step"] for r in rows))  # an evaluation in flight at the stop counts
            self._trial(trial_id).set_user_attr(
                "stop_reason", f"stopped at step {last} of {self.total_steps} (ASHA or the time budget)"
            )
            self._finish(trial_id, TrialState.PRUNED)
        else:
            self._finish(trial_id, TrialState.COMPLETE, values=self._values(rows))

    def _add(self, trial_id: str, row: dict[str, Any]) -> None:
        """One evaluation, once per step (a restarted worker group re-reports the steps after its
        checkpoint), reported at its training step."""
        row = {**row, "step": int(row["step"])}
        rows = self.history.setdefault(trial_id, [])
        if any(r["step"] == row["step"] for r in rows):
            return
        rows.append(row)
        rows.sort(key=lambda r: r["step"])
        value = row.get(self.objectives[0][0])
        if len(self.objectives) == 1 and _finite(value):  # Optuna keeps no curves for several objectives
            trial = self._trial(trial_id)
            if row["step"] not in self._frozen(trial_id).intermediate_values:
                trial.report(float(value), row["step"])

    def _time(self, trial_id: str, result: dict) -> None:
        """Add the result's seconds to the trial's current run (a restarted worker group's re-reported steps
        cost time too; a resumed trial's Tune clock may restart or continue from its checkpoint)."""
        runs = self.runs.setdefault(trial_id, [[]])
        if not runs[-1]:
            runs[-1] = [0.0, 0.0, 0.0]  # last result's time (epoch s), seconds so far, last time_total_s
        run, total = runs[-1], float(result.get("time_total_s") or 0.0)
        if result.get("timestamp") and float(result["timestamp"]) == run[0] and total == run[2]:
            return  # the same result again (Tune hands a finished trial's last one to on_trial_complete too)
        step = result.get("time_this_iter_s")
        run[1] += float(step) if step is not None else max(total - run[2], 0.0)
        run[0], run[2] = float(result.get("timestamp") or time.time()), total

    def _take_up(self, trial_id: str) -> None:
        """A trial whose run died with the driver: its record so far and what that run logged meanwhile (its
        evaluations, its time) join the study, and its next result starts a run of its own."""
        self._carry_on(trial_id)
        self._backfill(trial_id)
        self.runs.setdefault(trial_id, []).append([])

    def _carry_on(self, trial_id: str) -> None:
        """Where and how the trial ran as the study has it (the dead driver wrote it after Tune's last snapshot
        of this searcher): its next run is recorded after those."""
        attrs = self._frozen(trial_id).user_attrs
        self.where[trial_id] = {
            "nodes": list(attrs.get("nodes", [])),
            "runs": [[None, step] for step in attrs.get("resumed_from", [])],
        }

    def _where(self, trial_id: str, result: dict) -> None:
        """Record each node the trial ran on, and for each run of it (a new process, or a worker group
        restarted in it) the step it started from: 0, then a checkpoint's step for every restart."""
        seen = self.where.setdefault(trial_id, {"nodes": [], "runs": []})
        node = result.get("node_ip")
        if node and node not in seen["nodes"]:
            seen["nodes"].append(node)
            self._trial(trial_id).set_user_attr("nodes", list(seen["nodes"]))
        run = [result.get("pid"), int(result.get(RESUMED_FROM) or 0)]
        if RESUMED_FROM in result and (not seen["runs"] or seen["runs"][-1] != run):
            if not seen["runs"] and run[1] > 0:  # its checkpoint came from a run no result of which reached a
                seen["runs"].append([None, 0])  # driver (killed first): that run began at step 0
            seen["runs"].append(run)
            self._trial(trial_id).set_user_attr("resumed_from", [step for _, step in seen["runs"]])

    def _backfill(self, trial_id: str) -> None:
        """Add what rank 0 recorded but Tune never delivered; the time it took extends the
        current run."""
        if not self.journal_root:
            return
        logged = evaluations(self.journal_root, self.run_ids.get(trial_id, trial_id))
        have = {r["step"] for r in self.history.get(trial_id, [])}
        for step, metrics in sorted(logged.items()):
            if step not in have:
                self._add(
                    trial_id,
                    {
                        **{m: metrics.get(m) for m in self._kept_metrics()},
                        "step": step,
                        "trainable_params": metrics.get("trainable_params"),
                    },
                )
        runs = self.runs.setdefault(trial_id, [[]]) or [[]]
        self.runs[trial_id] = runs
        stamps = sorted(m[MADE_AT] / 1000 for m in logged.values())
        if not runs[-1]:  # a run Tune's last snapshot saw start but not report: it began by its first record
            before = max((run[0] for run in runs[:-1] if run), default=0.0)
            later = [t for t in stamps if t > before]
            if later:
                runs[-1] = [later[0], 0.0, 0.0]
        run, latest = runs[-1], stamps[-1] if stamps else 0.0
        if run and latest > run[0]:
            run[1], run[0] = run[1] + latest - run[0], latest

    def _scored(self, trial_id: str) -> list[dict[str, Any]]:
        return [r for r in self.history.get(trial_id, []) if _finite(r.get(self.objectives[0][0]))]

    def _values(self, rows: list[dict[str, Any]]) -> list[float]:
        metric, mode = self.objectives[0]
        values = [(max if mode == "max" else min)(float(r[metric]) for r in rows)]
        for metric, _ in self.objectives[1:]:
            seen = [float(r[metric]) for r in rows if _finite(r.get(metric))]
            values.append(sum(seen) / len(seen) if seen else math.nan)
        return values

    def _record_costs(self, trial_id: str) -> None:
        """What the trial cost over all its runs (a trial that diverged before its first evaluation too)."""
        trial, metric, mode = self._trial(trial_id), *self.objectives[0]
        wall = sum(run[1] for run in self.runs.get(trial_id, []) if run)
        trial.set_user_attr("wall_seconds", round(wall, 2))
        trial.set_user_attr("cpu_seconds", round(wall * self.demand["CPU"], 2))
        trial.set_user_attr("gpu_seconds", round(wall * self.demand["GPU"], 2))
        rows = self.history.get(trial_id, [])
        if not rows:
            return
        scored = self._scored(trial_id)
        best = (max if mode == "max" else min)(scored, key=lambda r: float(r[metric])) if scored else None
        trial.set_user_attr("last_step", rows[-1]["step"])
        counted = [r["trainable_params"] for r in rows if r.get("trainable_params") is not None]
        if counted:
            trial.set_user_attr("trainable_params", int(counted[-1]))
        if best is not None:
            trial.set_user_attr("best_step", best["step"])
        adapter = self._best_adapter(trial_id)
        if adapter is not None and adapter.get(CHECKPOINT_PATH_KEY):
            trial.set_user_attr("adapter_path", uri_of(self.storage, adapter[CHECKPOINT_PATH_KEY]))

    def _kept_metrics(self) -> list[str]:
        return list(dict.fromkeys([*(m for m, _ in self.objectives), SELECTED_BY]))

    def _best_adapter(self, trial_id: str) -> dict[str, Any] | None:
        """The evaluation whose adapter the trial kept as its best: the highest `SELECTED_BY`, the earlier of
        a tie, as the loop decides (its checkpoint is one that retention keeps). A sweep ranking trials by
        another metric (training loss, speed) still gets each trial's best adapter, not the checkpoint of
        the step where that metric was best, which retention may have deleted."""
        rows = [r for r in self.history.get(trial_id, []) if _finite(r.get(SELECTED_BY))]
        return max(rows, key=lambda r: float(r[SELECTED_BY])) if rows else None

    def _finish(
        self, trial_id: str, state: TrialState, values: list[float] | None = None, reason: str | None = None
    ) -> None:
        if reason:
            self._trial(trial_id).set_user_attr("fail_reason", reason[:2000])
        self.study.tell(self.numbers[trial_id], values if state == TrialState.COMPLETE else None, state=state)
        self.done.add(trial_id)
        if self.on_finished is not None:
            self.on_finished(self._frozen(trial_id))


def divergence_reason(result: dict, params: dict[str, Any] | None = None) -> str:
    """Where training diverged, with the learning rates it diverged at (the trial's, else the result's)."""
    config = params or result.get("config") or {}
    rates = ", ".join(f"{k}={v:g}" for k, v in config.items() if k.startswith("lr_") and isinstance(v, float))
    return f"training diverged: non-finite loss at step {int(result[DIVERGED])}" + (f" ({rates})" if rates else "")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class StudyEvents(tune.Callback):
    """Tune's events the searcher needs besides its own: each failed trial's error (Tune tells the searcher
    a trial errored before it tells callbacks why), each checkpoint Tune kept (the adapter of a trial in
    its actor), the passing time (stopped trials are told after a grace period) and the experiment's end."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error_file = trial.error_file  # written on the driver before callbacks run; storage gets it later
        text = Path(error_file).read_text() if error_file and Path(error_file).is_file() else ""
        self.searcher.fail(trial.trial_id, summarise_error(text) if text else "the trial raised an error")

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        self.searcher.checkpointed(trial.trial_id, checkpoint.path, (trial.last_result or {}).get("step"))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.searcher.settle_stopped()

    def on_experiment_end(self, trials: list, **info) -> None:
        self.searcher.flush()


def summarise_error(error: BaseException | str) -> str:
    """The root cause's last line: Tune wraps it in RayTaskError / TrainingFailedError layers."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    return (causes[-1] if causes else lines[-1] if lines else type(error).__name__)[:2000]
