"""The MLflow tracker of a sweep execution: a parent run, one child run per trial, a saved view.

Trials journal their child runs on the sweep's storage (`tracking.trial`); the driver's `DriverSender`
sends them and this tracker closes each one with the study's verdict: COMPLETE -> FINISHED, PRUNED
(stopped by ASHA) -> KILLED, FAIL -> FAILED. MLflow's statuses are fixed and show KILLED like a failure, so
every trial run also carries the study's state as the tag `deptune.state` (filter `tags.deptune.state =
'PRUNED'`), in its name and in its description. Every write of the driver's is journaled first too: while
MLflow is away the writes wait, and `deptune sync` sends them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from deptune.spec_base import redact
from deptune.storage import join
from deptune.tracking.base import ExecutionTracker, TrialRun, TrialVerdict
from deptune.tracking.journal import DriverSender, RunJournal, flush_all
from deptune.tracking.store import (
    CLASSIC_VIEW,
    TAG,
    check_reachable,
    ensure_experiment,
    resolve_uri,
    save_trials_view,
    trials_view_state,
    uri_problem,
)
from deptune.tracking.trial import NOTE_TAG, PARENT_TAG, STATE_TAG, SUMMARY_STEP, TrialTracking, readable, trial_key

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
"""A stopped trial's run is FINISHED: the search decided to stop it, nothing failed, and its record is whole up
to its stop (MLflow draws KILLED with FAILED's red cross). Its state tag, name, description and
`stopped_at_step` say it was stopped."""
SUFFIX = {"COMPLETE": "", "PRUNED": " (stopped early)", "FAIL": " (failed)"}


class MlflowExecutionTracker(ExecutionTracker):
    name = "mlflow"
    model_registry = True

    def __init__(self, uri, experiment, identity, journal_dir, trial_records) -> None:
        super().__init__(uri, experiment, identity, journal_dir, trial_records)
        self.experiment_id = ensure_experiment(uri, experiment)
        self.tags = {f"{TAG}{k}": v for k, v in identity.labels().items()}
        self.parent = RunJournal(journal_dir / "parent", uri)
        self.sender: DriverSender | None = None

    @classmethod
    def resolve_uri(cls, configured: str | None) -> str:
        return resolve_uri(configured)

    @classmethod
    def uri_problem(cls, uri: str) -> str | None:
        return uri_problem(uri)

    @classmethod
    def check_reachable(cls, uri: str, source: str) -> None:
        check_reachable(uri, source)

    @property
    def run_id(self) -> str | None:
        return self.parent.run_id

    def open(self, params: dict[str, Any], description: str, spec_file: str | None) -> None:
        if self.sender is None:
            self.sender = DriverSender(self.trial_records, self.uri)
        if self.parent.exists():
            self.parent.tags({f"{TAG}resumed": "true"})
            return
        self.parent.start(
            self.experiment_id,
            self.identity.sweep,
            find_by={f"{TAG}sweep": self.identity.sweep, f"{TAG}role": "sweep"},
            tags={**self.tags, f"{TAG}role": "sweep", NOTE_TAG: description},
        )
        self.parent.params(params)
        if spec_file and Path(spec_file).is_file():
            with tempfile.TemporaryDirectory(prefix="deptune-spec-") as folder:
                # the spec as written, but with its secrets (a study URL's password, ...) masked
                text = Path(spec_file).read_text(encoding="utf-8")
                (Path(folder) / Path(spec_file).name).write_text(redact(text), encoding="utf-8")
                self.parent.artifacts(folder, "spec")

    def save_trials_table(self, params: list[str], metrics: list[str], sort_by: str, ascending: bool) -> str | None:
        """The experiment's saved runs-table view of its trials (see `tracking.store.save_trials_view`)."""
        state = trials_view_state(params, metrics, [STATE_TAG], sort_by, ascending=ascending)
        try:
            return save_trials_view(self.uri, self.experiment_id, state)
        except Exception:  # noqa: BLE001 -- a convenience of the UI; the sweep does not depend on it
            return None

    def trial_tracking(self, objective: str, mode: str) -> TrialTracking:
        return TrialTracking(
            uri=self.uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.run_id or "",
            journal_root=self.trial_records,
            objective=objective,
            mode=mode,
            tags={**self.tags, PARENT_TAG: self.run_id or ""},
        )

    def _final_journal(self, key: str) -> RunJournal:
        """The driver's closing writes of a trial's run (its own journal: the trial's may be on any node)."""
        return RunJournal(self.journal_dir / f"{key}.final", self.uri)

    def _send_trial(self, key: str) -> None:
        """What the trial journaled, sent in full (by the driver's sender thread's lock, if it runs)."""
        location = join(self.trial_records, key)
        self.sender.send(location) if self.sender is not None else RunJournal(location, self.uri).flush()

    def close_trial(self, verdict: TrialVerdict) -> None:
        journal = self._final_journal(verdict.key)
        if not self.run_id or journal.exists():
            return
        self._send_trial(verdict.key)  # what the trial journaled, in full, first
        tracking = self.trial_tracking("objective", "max")  # (its tags and the key that finds the run)
        name = f"trial-{verdict.number:03d}"
        journal.start(
            self.experiment_id,
            name,
            find_by=trial_key(tracking, verdict.key),
            tags={**tracking.tags, f"{TAG}role": "trial", f"{TAG}optuna_trial": str(verdict.number)},
        )
        trial_journal = RunJournal(join(self.trial_records, verdict.key), self.uri, send="driver")
        if not trial_journal.exists():
            journal.params({k: readable(v) for k, v in verdict.params.items()})  # rank 0 never started
        journal.tags(
            {
                f"{TAG}optuna_state": verdict.state,
                STATE_TAG: verdict.state,
                "mlflow.runName": name + SUFFIX[verdict.state],
                NOTE_TAG: verdict.description,
                **({f"{TAG}reason": verdict.reason} if verdict.reason else {}),
            }
        )
        reached = trial_journal.logged_metrics()
        reached.pop(SUMMARY_STEP, None)
        last = max(reached, default=None)  # the last step rank 0 logged: no point is put past it
        if verdict.best_value is not None:  # the study's word, at the run's last step so the runs table shows
            # it: rank 0 may have logged an evaluation or two after ASHA's stop, which the study never saw
            best = {"best_objective": verdict.best_value}
            if verdict.best_step is not None:
                best["best_step"] = verdict.best_step
            step = last if last is not None else verdict.best_step or 0
            if any(reached.get(step, {}).get(k) != v for k, v in best.items()):
                journal.metrics(best, step)
        summary = dict(verdict.costs)
        if verdict.state == "PRUNED" and last is not None:
            summary["stopped_at_step"] = last
        if summary:
            journal.metrics(summary, SUMMARY_STEP)
        journal.end(STATUS[verdict.state])

    def trial_run(self, key: str) -> TrialRun | None:
        run_id = self._final_journal(key).run_id
        if run_id is None:
            return None
        from mlflow import MlflowClient

        run = MlflowClient(tracking_uri=self.uri).get_run(run_id)
        return TrialRun(
            id=run_id,
            name=run.info.run_name,
            adapter_uri=f"{run.info.artifact_uri}/adapter",
            link=f"#/experiments/{self.experiment_id}/runs/{run_id}?{CLASSIC_VIEW}",
        )

    def describe(self, description: str, labels: dict[str, str] | None = None) -> None:
        self.parent.tags({NOTE_TAG: description, **{f"{TAG}{k}": v for k, v in (labels or {}).items()}})

    def log_summary(self, metrics: dict[str, float], files: Path | None) -> None:
        if files is not None:
            self.parent.artifacts(files, None)
        self.parent.metrics(metrics, SUMMARY_STEP)

    def end(self, interrupted: bool) -> None:
        self.parent.end("KILLED" if interrupted else "FINISHED")

    def send_all(self) -> list[str]:
        return flush_all(self.trial_records, self.uri) + flush_all(self.journal_dir, self.uri)

    def stop_sending(self) -> None:
        if self.sender is not None:
            self.sender.stop()
            self.sender = None
