"""Sweeps on a real local Ray (2 CPUs, 127.0.0.1 only) with a real sqlite Optuna study: executions grow
one study (warm start), budgets hold in every trial, failing trials are recorded while the others run,
and a multi-objective sweep ends with a Pareto front."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from deptune.specs import parse_spec
from deptune.sweep.config import SweepSpec
from deptune.sweep.driver import run_sweep
from deptune.sweep.study import load_study, open_storage, storage_url
from stores import mlflow_store

pytestmark = pytest.mark.slow

TINY = {"name": "tiny-bert", "tiny": {"hidden_size": 32, "max_positions": 64, "dropout": 0.0}}


def make_spec(tmp_path, method: dict, search: dict, sweep: dict) -> SweepSpec:
    return parse_spec(
        {
            "backbone": TINY,
            "task": {"name": "synthetic", "synthetic_size": 300},
            "method": {"name": "dept", "max_length": 32, **method},
            "search": search,
            "train": {
                "steps": 12,
                "batch_size": 16,
                "eval_every": 4,
                "warmup_steps": 2,
                "lr_head": 0.01,
                "output_dir": str(tmp_path),
                "evaluate_test": False,
            },
            "resources": {"workers": 1, "cpus_per_worker": 0.75},
            "sweep": {"max_concurrent": 2, "driver_cpus": 0.25, "scheduler": {"name": "fifo"}, **sweep},
            "study": {"name": "test"},
            "tracking": {"uri": mlflow_store(tmp_path)},
        },
        kind=SweepSpec,
    )


def study_of(spec):
    return load_study(spec, open_storage(storage_url(spec)))


def test_executions_grow_one_study_and_every_trial_keeps_the_budget(ray_cluster, tmp_path):
    # d = s = 32 and even m: (l - m) * d is a multiple of s + d, so every trial's count is exactly l * d
    spec = make_spec(
        tmp_path,
        {"budget": 12},
        {"prompt_length": {"low": 2, "high": 10, "step": 2}},
        {"trials": 2, "sampler": {"name": "tpe", "startup_trials": 2}},
    )
    first = run_sweep(spec)
    assert len(first.study.trials) == 2
    second = run_sweep(spec)
    trials = study_of(spec).get_trials()
    assert (first.execution.number, second.execution.number) == (1, 2)
    assert first.execution.seed != second.execution.seed  # a new execution does not replay the old configs
    assert len(trials) == 4 and not [t for t in trials if t.state == TrialState.RUNNING]
    for trial in trials:
        m, r = trial.params["prompt_length"], trial.user_attrs["rank"]
        assert trial.state == TrialState.COMPLETE, trial.user_attrs
        assert r == (12 - m) * 32 // 64 and trial.user_attrs["adapter_params"] == m * 32 + r * 64 == 12 * 32
        assert trial.user_attrs["trainable_params"] == 12 * 32 + 32 * 2 + 2  # + the encoder's head
        assert set(trial.params) == {"prompt_length", "lr_prompt", "lr_lowrank"}
        assert 0.3 <= trial.params["lr_prompt"] <= 0.4 and 1e-4 <= trial.params["lr_lowrank"] <= 5e-3
        assert sorted(trial.intermediate_values) == [4, 8, 12]
        assert trial.values[0] == max(trial.intermediate_values.values())
        assert trial.user_attrs["cpu_seconds"] > 0 and trial.user_attrs["gpu_seconds"] == 0
    by_execution = {n: [t for t in trials if t.user_attrs["execution"] == n] for n in (1, 2)}
    assert [len(v) for v in by_execution.values()] == [2, 2]
    # the second execution's sampler had the first execution's two trials (TPE's startup) to learn from
    assert min(t.user_attrs["seen_trials"] for t in by_execution[2]) >= 2


def test_failing_trials_are_recorded_and_a_multi_objective_sweep_has_a_pareto_front(ray_cluster, tmp_path):
    good = {"prompt_length": 4, "rank": 2, "lr_prompt": 0.3, "lr_lowrank": 5e-3}
    spec = make_spec(
        tmp_path,
        {},
        {
            "prompt_length": {"low": 2, "high": 60},
            "rank": {"low": 1, "high": 4},
            "lr_prompt": {"low": 0.01, "high": 1e30},
        },
        {
            "trials": 4,
            "second_objective": {"metric": "step_time_s", "mode": "min"},
            "enqueue": [
                good,
                {**good, "prompt_length": 8, "rank": 4},
                {**good, "lr_prompt": 1e30},  # the prompt overflows: the loss becomes NaN
                {**good, "prompt_length": 60},
            ],
        },
    )  # 60 prompt tokens + the input overflow 64 positions
    outcome = run_sweep(spec)
    trials = {(t.params["prompt_length"], t.params["lr_prompt"]): t for t in study_of(spec).get_trials()}
    assert len(trials) == 4
    nan, overflow = trials[(4, 1e30)], trials[(60, 0.3)]
    assert nan.state == TrialState.FAIL and "non-finite loss" in nan.user_attrs["fail_reason"]
    assert overflow.state == TrialState.FAIL and "Error" in overflow.user_attrs["fail_reason"]
    completed = [trials[(4, 0.3)], trials[(8, 0.3)]]
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in completed)
    front = outcome.pareto
    assert front and {t.number for t in front} <= {t.number for t in completed}

    def dominates(a, b):  # objective maximised, step time minimised
        return a.values[0] >= b.values[0] and a.values[1] <= b.values[1] and a.values != b.values

    assert not any(dominates(other, point) for point in front for other in completed)


def test_trials_start_while_the_driver_opens_mlflow_and_log_under_its_parent_run(ray_cluster, tmp_path):
    """The tracker opens on a thread while Tune starts the trial actors; the trials read the tracking it
    publishes next to the Tune experiment, so their runs are the parent's children as before."""
    from mlflow import MlflowClient

    from deptune.tracking.trial import PublishedTracking

    spec = make_spec(
        tmp_path,
        {"budget": 12},
        {"prompt_length": {"low": 2, "high": 10, "step": 2}},
        {"trials": 2, "sampler": {"name": "tpe", "startup_trials": 2}, "max_concurrent": 1},
    )
    outcome = run_sweep(spec)
    parent = outcome.tracking.parent_run_id
    published = PublishedTracking(spec.train.ray_storage(), f"{outcome.execution.name}-tracking.json").resolve()
    assert published.parent_run_id == parent and published.tags["mlflow.parentRunId"] == parent
    client = MlflowClient(tracking_uri=published.uri)
    trials = client.search_runs([published.experiment_id], filter_string="tags.`deptune.role` = 'trial'")
    assert len(trials) == 2 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent}
    assert all(r.data.metrics.get("best_objective") is not None for r in trials)


def test_a_tracker_that_cannot_open_ends_the_sweep_with_its_error(ray_cluster, tmp_path, monkeypatch):
    from deptune.sweep.tracker import SweepTracker

    def refuse(self, spec_file):
        raise RuntimeError("the tracking server refused the parent run")

    monkeypatch.setattr(SweepTracker, "open_parent", refuse)
    spec = make_spec(
        tmp_path,
        {"budget": 12},
        {"prompt_length": {"low": 2, "high": 10, "step": 2}},
        {"trials": 2, "sampler": {"name": "tpe", "startup_trials": 2}, "max_concurrent": 1},
    )
    with pytest.raises(Exception) as raised:
        run_sweep(spec)
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("refused the parent run" in text for text in chain), chain


def test_an_opening_tracker_pickles_without_its_thread_and_builds_its_tracker_again(tmp_path):
    """Tune pickles the searcher's finish hook with its state; restored, it builds the tracker from the
    journals the first execution left."""
    import pickle

    from deptune.sweep.study import start_execution
    from deptune.sweep.tracker import OpeningTracker
    from deptune.tracking.trial import PublishedTracking

    spec = make_spec(
        tmp_path,
        {"budget": 12},
        {"prompt_length": {"low": 2, "high": 10, "step": 2}},
        {"trials": 2, "sampler": {"name": "tpe", "startup_trials": 2}},
    )
    study = study_of(spec)
    execution = start_execution(spec, study)
    published = PublishedTracking(str(tmp_path / "ray"), f"{execution.name}-tracking.json")
    opening = OpeningTracker(spec, spec.tracking.uri, execution, study, None, None, published)
    tracker = opening.get()
    assert published.resolve() == tracker.trial_tracking() and tracker.run_id
    restored = pickle.loads(pickle.dumps(opening))
    assert restored.error() is None
    again = restored.get()
    assert again is not tracker and again.run_id == tracker.run_id
    for opened in (opening, restored):  # as the driver does when a sweep ends without `finish`
        opened.stop_sending()
