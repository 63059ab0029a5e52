"""The driver's side of tracking: the execution's parent run, each trial's final status, and at the end the
leaderboard, plots, summary and the registered best adapter.

Trials write their own child runs (`tracking.trial`); the driver closes each one as the study records it:
COMPLETE -> FINISHED, PRUNED (stopped by ASHA) -> KILLED, FAIL -> FAILED with the reason as a tag. MLflow's
statuses are fixed and show KILLED like a failure, so every trial run also carries the study's state as
the tag `deptune.state` (filter `tags.deptune.state = 'PRUNED'`), in its name and in its description.
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
from deptune.spec_base import private_dir, redact
from deptune.storage import join
from deptune.sweep.config import SweepSpec
from deptune.sweep.leaderboard import ranked_rows
from deptune.sweep.space import SearchPlan
from deptune.sweep.study import Execution, spec_hash, storage_url
from deptune.tasks.loading import dataset_fingerprint
from deptune.tracking.journal import DriverSender, RunJournal, flush_all
from deptune.tracking.plots import warm_imports, write_plots
from deptune.tracking.store import TAG, ensure_experiment, save_trials_view, trials_view_state
from deptune.tracking.trial import (
    NOTE_TAG,
    STATE_TAG,
    SUMMARY_STEP,
    PublishedTracking,
    TrialTracking,
    run_params,
    trial_key,
)

STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
UNFINISHED = "unfinished.json"
"""In an execution's journal folder while MLflow has not taken everything: what `deptune sync` finishes."""


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


SUFFIX = {TrialState.COMPLETE: "", TrialState.PRUNED: " (stopped early)", TrialState.FAIL: " (failed)"}
BEST_RUN_TAG = f"{TAG}best_run_id"


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
    unfinished: str | None = None  # why the end of the tracking waits for `deptune sync` (MLflow was away)


def journal_dir_for(spec: SweepSpec, execution: Execution) -> Path:
    """Where the driver journals its own runs (the parent, each trial's closing writes): its disk."""
    return private_dir((spec.train.output_dir / "mlflow-journal").resolve()) / execution.name


def trial_journals_for(spec: SweepSpec, execution: Execution) -> str:
    """Where the trials journal their runs: the sweep's Ray storage, which every node reaches."""
    return join(spec.train.ray_storage(), f"{execution.name}-journal")


class SweepTracker:
    def __init__(
        self, spec: SweepSpec, uri: str, execution: Execution, study: optuna.Study, plan: SearchPlan | None = None
    ) -> None:
        self.spec, self.uri, self.execution, self.study, self.plan = spec, uri, execution, study, plan
        self.experiment_id = ensure_experiment(uri, spec.tracking.experiment or study.study_name)
        # the journals hold every write before MLflow has it: this user's only
        self.journal_dir = journal_dir_for(spec, execution)
        self.trial_journals = trial_journals_for(spec, execution)
        self.parent = RunJournal(self.journal_dir / "parent", uri)
        self.tags = {
            f"{TAG}sweep": execution.name,
            f"{TAG}study": study.study_name,
            f"{TAG}execution": str(execution.number),
            f"{TAG}git_commit": git_commit(),
            f"{TAG}spec_hash": spec_hash(spec),
            f"{TAG}dataset_fingerprint": dataset_fingerprint(spec.task),
        }
        self.metrics = [o.metric for o in spec.sweep.objectives]
        self.maximize = spec.sweep.objective.mode == "max"
        self.view: str | None = None
        self.sender: DriverSender | None = None

    def _save_view(self) -> str | None:
        """The experiment's saved runs-table view of its trials (see `tracking.store.save_trials_view`)."""
        dimensions = list(self.plan.dimensions) if self.plan else list(type(self.spec.method).dimension_kinds())
        others = [k for k in dimensions if k not in ("prompt_length", "rank")]  # rates, a method's own dimensions
        columns = ["prompt_length", "rank", *others, "trainable_params"]
        state = trials_view_state(
            columns,
            ["best_objective", "best_step", "cpu_seconds"],
            [STATE_TAG],
            "best_objective",
            ascending=not self.maximize,
        )
        try:
            return save_trials_view(self.uri, self.experiment_id, state)
        except Exception:  # noqa: BLE001 -- a convenience of the UI; the sweep does not depend on it
            return None

    def open_parent(self, spec_file: str | None) -> str | None:
        """Create (or, on --resume, find) the execution's parent run, and start sending what the trials
        journal; the parent's id once the server took it."""
        if self.sender is None:
            self.sender = DriverSender(self.trial_journals, self.uri)
        self.view = self._save_view()
        if not self.parent.exists():
            self.parent.start(
                self.experiment_id,
                self.execution.name,
                find_by={f"{TAG}sweep": self.execution.name, f"{TAG}role": "sweep"},
                tags={**self.tags, f"{TAG}role": "sweep", NOTE_TAG: self._note(None)},
            )
            self.parent.params(self._parent_params())
            if spec_file and Path(spec_file).is_file():
                with tempfile.TemporaryDirectory(prefix="deptune-spec-") as folder:
                    # the spec as written, but with its secrets (a study URL's password, ...) masked
                    text = Path(spec_file).read_text(encoding="utf-8")
                    (Path(folder) / Path(spec_file).name).write_text(redact(text), encoding="utf-8")
                    self.parent.artifacts(folder, "spec")
        else:
            self.parent.tags({f"{TAG}resumed": "true"})
        return self.parent.run_id

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

    def _note(self, best: tuple[FrozenTrial, str | None] | None) -> str:
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
            trial, run_id = best
            link = (
                f"[trial-{trial.number:03d}](#/experiments/{self.experiment_id}/runs/{run_id})"
                if run_id
                else f"trial-{trial.number:03d}"
            )
            lines.append(f"Best trial: {link}, {sweep.objective.metric} = {trial.values[0]:.4g}.")
        return "\n\n".join(lines)

    def trial_tracking(self) -> TrialTracking:
        objective = self.spec.sweep.objective
        return TrialTracking(
            uri=self.uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent.run_id or "",
            journal_root=self.trial_journals,
            objective=objective.metric,
            mode=objective.mode,
            tags={**self.tags, "mlflow.parentRunId": self.parent.run_id or ""},
        )

    def _final_journal(self, trial: FrozenTrial) -> RunJournal:
        return RunJournal(self.journal_dir / f"{trial.user_attrs['ray_trial_id']}.final", self.uri)

    def _trial_journal(self, ray_id: str) -> RunJournal:
        return RunJournal(join(self.trial_journals, ray_id), self.uri, send="driver")

    def _send_trial(self, ray_id: str) -> bool:
        """What the trial journaled, sent in full (by the driver's sender thread's lock, if it runs)."""
        location = join(self.trial_journals, ray_id)
        return self.sender.send(location) if self.sender is not None else RunJournal(location, self.uri).flush()

    def finish_trial(self, trial: FrozenTrial) -> None:
        """Close the trial's child run with the study's verdict (creating it if the trial never got to)."""
        ray_id = trial.user_attrs.get("ray_trial_id")
        if ray_id is None or trial.state not in STATUS or not self.parent.run_id:
            return
        journal = self._final_journal(trial)
        if journal.exists():
            return
        self._send_trial(ray_id)  # what the trial journaled, in full, first
        tracking = self.trial_tracking()
        name = f"trial-{trial.number:03d}"
        journal.start(
            self.experiment_id,
            name,
            find_by=trial_key(tracking, ray_id),
            tags={**tracking.tags, f"{TAG}role": "trial", f"{TAG}optuna_trial": str(trial.number)},
        )
        if not self._trial_journal(ray_id).exists():  # rank 0 never started: the run is ours
            journal.params(
                {
                    "prompt_length": trial.user_attrs.get("prompt_length"),
                    "rank": trial.user_attrs.get("rank"),
                    **trial.params,
                }
            )
        reason = trial.user_attrs.get("fail_reason") or trial.user_attrs.get("stop_reason")
        journal.tags(
            {
                f"{TAG}optuna_state": trial.state.name,
                STATE_TAG: trial.state.name,
                "mlflow.runName": name + SUFFIX[trial.state],
                NOTE_TAG: describe(trial, self.maximize, self.spec.sweep.objective.metric),
                **({f"{TAG}reason": reason} if reason else {}),
            }
        )
        value, step = best_value(trial, self.maximize)
        if value is not None:  # the study's word, logged at the last possible step so the runs table shows it:
            # rank 0 may have logged an evaluation or two after ASHA's stop, which the study never saw
            journal.metrics(
                {"best_objective": value, **({"best_step": step} if step is not None else {})}, self.spec.train.steps
            )
        costs = {
            k: trial.user_attrs[k]
            for k in ("cpu_seconds", "gpu_seconds", "wall_seconds")
            if trial.user_attrs.get(k) or (k != "gpu_seconds" and k in trial.user_attrs)
        }
        if costs:
            costs["accelerator_seconds"] = costs.get("gpu_seconds") or costs.get("cpu_seconds", 0.0)
            journal.metrics(costs, SUMMARY_STEP)
        journal.end(STATUS[trial.state])

    def finish(self, interrupted: bool) -> SweepOutcomeTracking:
        """Close every trial's run and send every journal; then register the best adapter and write the
        parent's link to the best trial, leaderboard, plots and summary. Registration and the leaderboard
        need every run on the server: while MLflow cannot take the journals, they wait (the outcome says
        so) for `deptune sync`, which sends the journals and finishes from here."""
        self.stop_sending()
        mine = self._trials()
        for trial in mine:
            self.finish_trial(trial)
        left = flush_all(self.trial_journals, self.uri) + flush_all(self.journal_dir, self.uri)
        if left:
            self._mark_unfinished(interrupted)
            return SweepOutcomeTracking(
                self.parent.run_id or "",
                None,
                left,
                unfinished=(
                    "MLflow did not take every write, so the best adapter is not registered and the leaderboard is "
                    f"not written yet: once the server answers, run `deptune sync {self.journal_dir}`"
                ),
            )
        return self.complete(interrupted)

    def complete(self, interrupted: bool) -> SweepOutcomeTracking:
        """The end of the tracking, once every trial's run is on the server (also `deptune sync`'s)."""
        mine = self._trials()
        best = self._best(mine)
        promotion, problems = None, []
        if not interrupted and self.spec.tracking.register_best and best is not None:
            try:
                promotion = self._register(best)
            except Exception as exc:  # noqa: BLE001 -- the sweep's results stand; registration can be redone
                problems.append(
                    f"registering the best adapter failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); redo it with "
                    f"`deptune promote RUN_ID --model ...`"
                )
        if best is not None:
            run_id = self._final_journal(best).run_id
            self.parent.tags(
                {BEST_RUN_TAG: run_id or "", f"{TAG}best_trial": str(best.number), NOTE_TAG: self._note((best, run_id))}
            )
        self._parent_files(mine, promotion)
        self._summary(mine, promotion)
        self.parent.end("KILLED" if interrupted else "FINISHED")
        (self.journal_dir / UNFINISHED).unlink(missing_ok=True)
        left = flush_all(self.journal_dir, self.uri)
        return SweepOutcomeTracking(self.parent.run_id or "", promotion, problems + left)

    def _trials(self) -> list[FrozenTrial]:
        return [
            t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("execution") == self.execution.number
        ]

    def _mark_unfinished(self, interrupted: bool) -> None:
        """What `deptune sync` needs to finish this execution's tracking from its journal folder."""
        record = {
            "spec": self.spec.model_dump(mode="json"),
            "uri": self.uri,
            "study": storage_url(self.spec),
            "study_name": self.study.study_name,
            "execution": self.execution.__dict__,
            "interrupted": interrupted,
        }
        (self.journal_dir / UNFINISHED).write_text(json.dumps(record))

    def stop_sending(self) -> None:
        """Stop the driver's sender thread (what is left unsent is sent by `finish`'s `flush_all`)."""
        if self.sender is not None:
            self.sender.stop()
            self.sender = None

    def _best(self, trials: list[FrozenTrial]) -> FrozenTrial | None:
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            return None
        return (max if self.maximize else min)(complete, key=lambda t: t.values[0])

    def _register(self, best: FrozenTrial) -> registry.Promotion | None:
        run_id = self._final_journal(best).run_id
        if run_id is None:
            return None
        objective = self.spec.sweep.objective
        name = self.spec.tracking.registered_model or f"deptune-{self.spec.task.name}-{self.spec.method.name}"
        lock_url = os.environ.get(registry.LOCK_ENV) or storage_url(self.spec)
        return registry.promote(
            run_id,
            name,
            metric=objective.metric,
            mode=objective.mode,
            uri=self.uri,
            lock_url=lock_url,
            lineage={f"{TAG}optuna_value": repr(best.values[0])},
        )

    def _rows(self, trials: list[FrozenTrial], promotion: registry.Promotion | None) -> list[dict]:
        """The leaderboard of this execution: one column per objective, each trial's MLflow run (id, name)
        and where its adapter is in MLflow (the artifact URI; the registered version for the best)."""
        from mlflow import MlflowClient

        client, mine = MlflowClient(tracking_uri=self.uri), {t.number: t for t in trials}
        rows = []
        for row in ranked_rows(self.study, self.metrics):
            trial = mine.get(row["number"])
            if trial is None or "ray_trial_id" not in trial.user_attrs:
                continue
            run_id = self._final_journal(trial).run_id
            run = client.get_run(run_id) if run_id else None
            registered = promotion.uri if promotion and run and promotion.run_id == run_id else None
            rows.append(
                {
                    "number": row.pop("number"),
                    "state": row.pop("state"),
                    "run_name": run.info.run_name if run else None,
                    "run_id": run_id,
                    **row,
                    "adapter_uri": f"{run.info.artifact_uri}/adapter" if run else None,
                    "registered_model": registered,
                }
            )
        return rows

    def _parent_files(self, trials: list[FrozenTrial], promotion: registry.Promotion | None) -> None:
        rows = self._rows(trials, promotion)
        with tempfile.TemporaryDirectory(prefix="deptune-results-") as tmp:
            folder = Path(tmp)
            if rows:
                with (folder / "leaderboard.csv").open("w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
            write_plots(self.study, folder / "plots", self.metrics)
            self.parent.artifacts(folder, None)

    def _summary(self, trials: list[FrozenTrial], promotion: registry.Promotion | None) -> None:
        counts = {state: sum(t.state == state for t in trials) for state in STATUS}
        summary = {
            "trials_completed": counts[TrialState.COMPLETE],
            "trials_stopped": counts[TrialState.PRUNED],
            "trials_failed": counts[TrialState.FAIL],
            "cpu_seconds": sum(t.user_attrs.get("cpu_seconds", 0.0) for t in trials),
        }
        gpu = sum(t.user_attrs.get("gpu_seconds", 0.0) for t in trials)
        if gpu:
            summary["gpu_seconds"] = gpu
        summary["accelerator_seconds"] = gpu or summary["cpu_seconds"]
        best = self._best(trials)
        if best is not None:
            summary["best_objective"] = best.values[0]
        self.parent.metrics(summary, SUMMARY_STEP)
        if promotion is not None:
            self.parent.tags(
                {f"{TAG}registered_version": promotion.uri, f"{TAG}champion": str(promotion.champion).lower()}
            )


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
    ) -> None:
        self.args = (spec, uri, execution, study, plan)
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
    """`deptune sync` of an execution whose tracking waited for MLflow: send its journals, then register
    and write the leaderboard as the sweep would have (None when nothing waits in `journal_dir`)."""
    marker = Path(journal_dir) / UNFINISHED
    if not marker.is_file():
        return None
    from deptune.sweep.study import open_storage

    record = json.loads(marker.read_text())
    spec = SweepSpec.model_validate(record["spec"])
    study = optuna.load_study(study_name=record["study_name"], storage=open_storage(record["study"]))
    tracker = SweepTracker(spec, record["uri"], Execution(**record["execution"]), study)
    left = flush_all(tracker.trial_journals, tracker.uri) + flush_all(tracker.journal_dir, tracker.uri)
    if left:
        return SweepOutcomeTracking(
            tracker.parent.run_id or "",
            None,
            left,
            unfinished="MLflow still did not take every write; run `deptune sync` again once it answers",
        )
    return tracker.complete(record["interrupted"])
