"""The sweep's side of tracking: what to record of an execution and its trials, said to the execution's
tracker (`tracking.base.ExecutionTracker`; MLflow's is `tracking.mlflow_execution`): the execution's
settings, each trial's verdict as the study has it (COMPLETE, PRUNED: stopped early and no failure, FAIL
with its reason), and at the end the leaderboard, plots, summary and the registered best adapter.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from deptune.registry import promotion as registry
from deptune.spec_base import private_dir
from deptune.storage import join
from deptune.sweep.config import SweepSpec
from deptune.sweep.leaderboard import ranked_rows
from deptune.sweep.space import SearchPlan
from deptune.sweep.study import Execution, spec_hash, storage_url
from deptune.tasks.loading import dataset_fingerprint
from deptune.tracking.base import ExecutionIdentity, ExecutionTracker, TrialRun, TrialVerdict, waiting_record
from deptune.tracking.catalog import tracker_class
from deptune.tracking.plots import warm_imports, write_plots
from deptune.tracking.trial import PublishedTracking, TrialTracking, run_params

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def git_commit() -> str:
    """The code's commit: $DEPTUNE_GIT_COMMIT (a job's working dir has no .git), else git, else unknown."""
    if os.environ.get("DEPTUNE_GIT_COMMIT"):
        return os.environ["DEPTUNE_GIT_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def best_value(trial: FrozenTrial, maximize: bool) -> tuple[float | None, int | None]:
    """What the study ranks a trial on: its value, or a stopped trial's best intermediate value; and the
    step it came from."""
    if trial.state == TrialState.COMPLETE:
        return trial.values[0], trial.user_attrs.get("best_step")
    if not trial.intermediate_values:  # (a pruned trial's value in Optuna is its last intermediate one)
        return None, None
    step = (max if maximize else min)(trial.intermediate_values, key=trial.intermediate_values.get)
    return trial.intermediate_values[step], step


def describe(trial: FrozenTrial, maximize: bool, metric: str) -> str:
    """A trial run's description: what the study says happened, in words."""
    value, step = best_value(trial, maximize)
    best = f"best {metric} {value:.4g} at step {step}" if value is not None else f"no {metric} reported"
    if trial.state == TrialState.COMPLETE:
        return f"**COMPLETE**: trained to the end; {best}."
    if trial.state == TrialState.PRUNED:
        return (
            f"**PRUNED** (not a failure): {trial.user_attrs.get('stop_reason', 'stopped early')}; {best} "
            f"before the stop."
        )
    return f"**FAIL**: {trial.user_attrs.get('fail_reason', 'the trial failed')}; {best}."


@dataclass
class SweepOutcomeTracking:
    parent_run_id: str
    promotion: registry.Promotion | None
    not_logged: list[str] = field(default_factory=list)  # journals still holding writes, with their paths
    unfinished: str | None = None  # why the end of the tracking waits for `deptune sync` (the store was away)
    view: str | None = None  # the tracker UI's table of the trials, relative to its URI


def journal_dir_for(spec: SweepSpec, execution: Execution) -> Path:
    """Where the driver journals its own runs (the parent, each trial's closing writes): its disk."""
    return private_dir((spec.train.output_dir / "mlflow-journal").resolve()) / execution.name


def trial_journals_for(spec: SweepSpec, execution: Execution) -> str:
    """Where the trials journal their runs: the sweep's Ray storage, which every node reaches."""
    return join(spec.train.ray_storage(), f"{execution.name}-journal")


class SweepTracker:
    """One execution's tracking, in the sweep's terms, over the tracker `tracking.tracker` names."""

    def __init__(
        self,
        spec: SweepSpec,
        uri: str,
        execution: Execution,
        study: optuna.Study,
        plan: SearchPlan | None = None,
        study_url: str | None = None,
    ) -> None:
        """`uri`, `study_url`: the tracking URI and the study's storage as the prepared sweep resolved them."""
        self.spec, self.uri, self.execution, self.study, self.plan = spec, uri, execution, study, plan
        self.study_url = study_url or storage_url(spec)
        identity = ExecutionIdentity(
            sweep=execution.name,
            study=study.study_name,
            execution=execution.number,
            git_commit=git_commit(),
            spec_hash=spec_hash(spec),
            dataset_fingerprint=dataset_fingerprint(spec.task),
        )
        # the journals hold every write before the tracker's store has it: this user's only
        self.tracker: ExecutionTracker = tracker_class(spec.tracking.tracker)(
            uri,
            spec.tracking.experiment or study.study_name,
            identity,
            journal_dir_for(spec, execution),
            trial_journals_for(spec, execution),
        )
        self.metrics = [o.metric for o in spec.sweep.objectives]
        self.maximize = spec.sweep.objective.mode == "max"
        self.view: str | None = None

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id

    def _save_view(self) -> str | None:
        """A saved table of the trials, best first: m, r, the rates and a method's own dimensions."""
        dimensions = list(self.plan.dimensions) if self.plan else list(type(self.spec.method).dimension_kinds())
        others = [k for k in dimensions if k not in ("prompt_length", "rank")]
        return self.tracker.save_trials_table(
            ["prompt_length", "rank", *others, "trainable_params"],
            ["best_objective", "best_step", "stopped_at_step", "cpu_seconds"],
            "best_objective",
            ascending=not self.maximize,
        )

    def open_parent(self, spec_file: str | None) -> str | None:
        """Create (or, on --resume, find) the execution's run; its id once the store took it."""
        self.view = self._save_view()
        self.tracker.open(self._parent_params(), self._note(None), spec_file)
        return self.tracker.run_id

    def _parent_params(self) -> dict:
        """The sweep's settings as they took effect: the searched dimensions with defaults filled in (what
        is derived, like DePT's r under a budget, is said so), the spec's seed and the execution's
        sampler seed derived from it."""
        searched = type(self.spec.method).dimension_kinds()
        params = {k: v for k, v in run_params(self.spec.base_run()).items() if k not in searched}
        sweep = self.spec.sweep
        search = self.plan.effective_search() if self.plan else None
        if (
            search is not None
            and "rank" not in search
            and self.plan.rank is None
            and getattr(self.spec.method, "budget", None)
        ):
            search["rank"] = "derived from prompt_length and the budget"
        return {
            **params,
            "trials": sweep.trials,
            "max_concurrent": sweep.max_concurrent,
            "objective": f"{sweep.objective.metric}:{sweep.objective.mode}",
            "second_objective": (
                f"{sweep.second_objective.metric}:{sweep.second_objective.mode}" if sweep.second_objective else None
            ),
            **sweep.scheduler.params(self.spec),
            "sampler": sweep.sampler.name,
            "sweep_seed": sweep.seed,
            "sampler_seed": self.execution.seed,
            "startup_trials": sweep.sampler.startup,
            "search": json.dumps(search) if search is not None else None,
        }

    def _note(self, best: tuple[FrozenTrial, TrialRun | None] | None) -> str:
        """The parent run's description: what the execution is, and a link to its best trial's run."""
        sweep = self.spec.sweep
        lines = [
            f"Execution {self.execution.number} of study `{self.study.study_name}`: {sweep.trials} trials "
            f"of {self.spec.method.name} on {self.spec.task.name} with {self.spec.backbone.name}, ranked on "
            f"{sweep.objective.metric} ({sweep.objective.mode}). Sampler seed {self.execution.seed} "
            f"(derived from sweep.seed {sweep.seed} and the execution number, so executions differ)."
        ]
        if self.view:
            lines.append(
                f"[Trials, best first]({self.view}) (the runs table's Views menu: *deptune: trials, best first*)."
            )
        if best is not None:
            trial, run = best
            link = f"[trial-{trial.number:03d}]({run.link})" if run else f"trial-{trial.number:03d}"
            lines.append(f"Best trial: {link}, {sweep.objective.metric} = {trial.values[0]:.4g}.")
        return "\n\n".join(lines)

    def trial_tracking(self) -> TrialTracking:
        objective = self.spec.sweep.objective
        return self.tracker.trial_tracking(objective.metric, objective.mode)

    def verdict(self, trial: FrozenTrial) -> TrialVerdict:
        """What the study says of a finished trial, for its run."""
        value, step = best_value(trial, self.maximize)
        attrs = trial.user_attrs
        costs = {
            k: attrs[k]
            for k in ("cpu_seconds", "gpu_seconds", "wall_seconds")
            if attrs.get(k) or (k != "gpu_seconds" and k in attrs)
        }
        return TrialVerdict(
            number=trial.number,
            key=attrs["ray_trial_id"],
            state=trial.state.name,
            description=describe(trial, self.maximize, self.spec.sweep.objective.metric),
            params={"prompt_length": attrs.get("prompt_length"), "rank": attrs.get("rank"), **trial.params},
            best_value=value,
            best_step=step,
            reason=attrs.get("fail_reason") or attrs.get("stop_reason"),
            costs=costs,
        )

    def finish_trial(self, trial: FrozenTrial) -> None:
        """Close the trial's run with the study's verdict (creating it if the trial never got to)."""
        if "ray_trial_id" in trial.user_attrs and trial.state in FINISHED and self.tracker.run_id:
            self.tracker.close_trial(self.verdict(trial))

    def finish(self, interrupted: bool) -> SweepOutcomeTracking:
        """Close every trial's run and send everything kept back; then register the best adapter and write the
        execution's link to the best trial, leaderboard, plots and summary. Registration and the leaderboard
        need every run in the store: while it cannot take them, they wait (the outcome says so) for
        `deptune sync`, which sends them and finishes from here."""
        self.tracker.stop_sending()
        for trial in self._trials():
            self.finish_trial(trial)
        left = self.tracker.send_all()
        if left:
            command = self.tracker.wait_for_sync(self._sync_record(interrupted))
            return SweepOutcomeTracking(
                self.tracker.run_id or "",
                None,
                left,
                unfinished=(
                    "the tracker did not take every write, so the best adapter is not registered and the "
                    f"leaderboard is not written yet: once its store answers, run `{command}`"
                ),
            )
        return self.complete(interrupted)

    def complete(self, interrupted: bool) -> SweepOutcomeTracking:
        """The end of the tracking, once every trial's run is in the store (also `deptune sync`'s)."""
        mine = self._trials()
        best = self._best(mine)
        promotion, problems = None, []
        if (
            not interrupted
            and self.spec.tracking.register_best
            and best is not None
            and not self.tracker.model_registry
        ):
            problems.append(
                f"tracking.register_best: the {self.tracker.name!r} tracker keeps no runs MLflow's Model Registry "
                f"registers from; the best adapter is trial {best.number}'s"
            )
        elif not interrupted and self.spec.tracking.register_best and best is not None:
            try:
                promotion = self._register(best)
            except Exception as exc:  # noqa: BLE001 -- the sweep's results stand; registration can be redone
                problems.append(
                    f"registering the best adapter failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); redo it with "
                    f"`deptune promote RUN_ID --model ...`"
                )
        labels = {}
        if best is not None:
            run = self.tracker.trial_run(best.user_attrs["ray_trial_id"])
            labels = {"best_run_id": run.id if run else "", "best_trial": str(best.number)}
        if promotion is not None:
            labels.update(registered_version=promotion.uri, champion=str(promotion.champion).lower())
        self.tracker.describe(self._note((best, run) if best is not None else None), labels)
        with tempfile.TemporaryDirectory(prefix="deptune-results-") as tmp:
            self._write_files(Path(tmp), mine, promotion)
            self.tracker.log_summary(self._summary(mine), Path(tmp))
        self.tracker.end(interrupted)
        self.tracker.synced()
        left = self.tracker.send_all()
        return SweepOutcomeTracking(self.tracker.run_id or "", promotion, problems + left, view=self.view)

    def _trials(self) -> list[FrozenTrial]:
        return [
            t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("execution") == self.execution.number
        ]

    def _sync_record(self, interrupted: bool) -> dict:
        """What `deptune sync` needs to finish this execution's tracking."""
        return {
            "spec": self.spec.model_dump(mode="json"),
            "study": self.study_url,
            "study_name": self.study.study_name,
            "execution": self.execution.__dict__,
            "interrupted": interrupted,
        }

    def stop_sending(self) -> None:
        """Stop the tracker's background sending (what is left is sent by `finish`)."""
        self.tracker.stop_sending()

    def _best(self, trials: list[FrozenTrial]) -> FrozenTrial | None:
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            return None
        return (max if self.maximize else min)(complete, key=lambda t: t.values[0])

    def _register(self, best: FrozenTrial) -> registry.Promotion | None:
        run = self.tracker.trial_run(best.user_attrs["ray_trial_id"])
        if run is None:
            return None
        objective = self.spec.sweep.objective
        name = self.spec.tracking.registered_model or f"deptune-{self.spec.task.name}-{self.spec.method.name}"
        lock_url = os.environ.get(registry.LOCK_ENV) or self.study_url
        return registry.promote(
            run.id,
            name,
            metric=objective.metric,
            mode=objective.mode,
            uri=self.uri,
            lock_url=lock_url,
            lineage={"optuna_value": repr(best.values[0])},
        )

    def _rows(self, trials: list[FrozenTrial], promotion: registry.Promotion | None) -> list[dict]:
        """The leaderboard of this execution, what a reader compares first leftmost: one column per objective,
        then m, r and every learning rate (a searched one as the trial drew it, a fixed one as the spec sets
        it) and the method's other dimensions; then the trial, its run (id, name), steps, counts, costs and
        where its adapter is (the artifact URI; the registered version for the best)."""
        fixed = run_params(self.spec.base_run())
        rates = sorted(k for k in fixed if k.startswith("lr_"))
        mine, rows = {t.number: t for t in trials}, []
        for row in ranked_rows(self.study, self.metrics):
            trial = mine.get(row["number"])
            if trial is None or "ray_trial_id" not in trial.user_attrs:
                continue
            run = self.tracker.trial_run(trial.user_attrs["ray_trial_id"])
            registered = promotion.uri if promotion and run and promotion.run_id == run.id else None
            first = {m: row.pop(m) for m in self.metrics}
            first.update(prompt_length=row.pop("prompt_length"), rank=row.pop("rank"))
            first.update({k: row.pop(k) if row.get(k) is not None else fixed[k] for k in rates})
            first.update({k: row.pop(k) for k in list(row) if k in trial.params})
            rows.append(
                {
                    **first,
                    "number": row.pop("number"),
                    "state": row.pop("state"),
                    "run_name": run.name if run else None,
                    "run_id": run.id if run else None,
                    **row,
                    "adapter_uri": run.adapter_uri if run else None,
                    "registered_model": registered,
                }
            )
        return rows

    def _write_files(self, folder: Path, trials: list[FrozenTrial], promotion: registry.Promotion | None) -> None:
        rows = self._rows(trials, promotion)
        if rows:
            with (folder / "leaderboard.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        write_plots(self.study, folder / "plots", self.metrics)

    def _summary(self, trials: list[FrozenTrial]) -> dict[str, float]:
        counts = {state: sum(t.state == state for t in trials) for state in FINISHED}
        summary = {
            "trials_completed": counts[TrialState.COMPLETE],
            "trials_stopped": counts[TrialState.PRUNED],
            "trials_failed": counts[TrialState.FAIL],
            "cpu_seconds": sum(t.user_attrs.get("cpu_seconds", 0.0) for t in trials),
        }
        gpu = sum(t.user_attrs.get("gpu_seconds", 0.0) for t in trials)
        if gpu:
            summary["gpu_seconds"] = gpu
        best = self._best(trials)
        if best is not None:
            summary["best_objective"] = best.values[0]
        return summary


class OpeningTracker:
    """The execution's tracker, opened on a thread (MLflow's import, its store, the experiment and the parent
    run: seconds) while Tune starts the first trial actors, whose own start (a fresh process importing torch,
    Ray Tune, transformers) takes longer; the trials read their tracking from `published` once it is there.
    Whoever needs the tracker first waits for it. Pickled with Tune's state (the searcher's finish hook), it
    keeps what builds the tracker again from the journals on disk, as `--resume` does."""

    def __init__(
        self,
        spec: SweepSpec,
        uri: str,
        execution: Execution,
        study: optuna.Study,
        plan: SearchPlan | None,
        source: str | None,
        published: PublishedTracking,
        study_url: str | None = None,
    ) -> None:
        self.args = (spec, uri, execution, study, plan, study_url)
        self.source, self.published = source, published
        self._tracker: SweepTracker | None = None
        self._error: BaseException | None = None
        self._ready: threading.Event | None = threading.Event()
        self._thread = threading.Thread(target=self._open, name="deptune-open-tracking", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            tracker = SweepTracker(*self.args)
            tracker.open_parent(self.source)
            self.published.publish(tracker.trial_tracking())
            self._tracker = tracker
        except BaseException as exc:  # noqa: BLE001 -- handed to whoever waits for the tracker
            self._error = exc
        finally:
            self._ready.set()
        try:  # while the trials train: the end of the sweep draws its plots without waiting for the imports
            warm_imports()
        except Exception:  # noqa: BLE001 -- write_plots imports them again and says what is wrong
            pass

    def error(self) -> BaseException | None:
        """The opening's error once it failed (None while it runs or after it succeeded)."""
        return self._error if self._ready is None or self._ready.is_set() else None

    def get(self) -> SweepTracker:
        if self._ready is not None:
            self._ready.wait()
        if self._error is not None:
            raise self._error
        if self._tracker is None:  # unpickled (a restored Tune state): the journals say what was opened
            self._tracker = SweepTracker(*self.args)
        return self._tracker

    def finish_trial(self, trial: FrozenTrial) -> None:
        self.get().finish_trial(trial)

    def stop_sending(self) -> None:
        """The sweep ended without `finish` (an error): stop the opened tracker's sender thread."""
        if self._tracker is not None:
            self._tracker.stop_sending()

    def __getstate__(self) -> dict:
        return {
            "args": self.args,
            "source": self.source,
            "published": self.published,
            "_tracker": None,
            "_error": None,
            "_thread": None,
            "_ready": None,
        }


def finish_unfinished(journal_dir: Path) -> SweepOutcomeTracking | None:
    """`deptune sync` of an execution whose tracking waited for its store: send what was kept back, then
    register and write the leaderboard as the sweep would have (None when nothing waits in `journal_dir`)."""
    record = waiting_record(journal_dir)
    if record is None:
        return None
    from deptune.sweep.study import open_storage

    spec = SweepSpec.model_validate(record["spec"])
    study = optuna.load_study(study_name=record["study_name"], storage=open_storage(record["study"]))
    tracker = SweepTracker(spec, record["uri"], Execution(**record["execution"]), study)
    left = tracker.tracker.send_all()
    if left:
        return SweepOutcomeTracking(
            tracker.run_id or "",
            None,
            left,
            unfinished="the tracker's store still did not take every write; run `deptune sync` again once it answers",
        )
    return tracker.complete(record["interrupted"])
