"""A trial's record is whole when a worker is killed and when ASHA stops a trial: per trial, the study's
intermediate values and the MLflow run's metric history hold the same steps, each once, and the cost
covers the whole trial. (The driver kill + `--resume` case is in test_sweep_resume.py.)"""

from __future__ import annotations

import pytest
import ray
from mlflow import MlflowClient
from optuna.trial import TrialState

from deptune.specs import parse_spec
from deptune.sweep.config import SweepSpec
from deptune.sweep.driver import run_sweep
from faults import kill_after_report
from stores import mlflow_store

pytestmark = pytest.mark.slow

GOOD = {"prompt_length": 4, "lr_prompt": 0.05, "lr_lowrank": 1e-3, "lr_head": 0.01}
FROZEN = {**GOOD, "lr_prompt": 1e-9, "lr_lowrank": 1e-9, "lr_head": 1e-9}  # ASHA stops it at step 16


def sweep_spec(tmp_path) -> SweepSpec:
    """test_tracking's ASHA sweep (rungs at 8 and 16 on the train loss), one learning and one frozen trial."""
    return parse_spec(
        {
            "backbone": {"name": "tiny-bert", "tiny": {"hidden_size": 32, "max_positions": 64, "dropout": 0.0}},
            "task": {"name": "synthetic", "synthetic_size": 300},
            "method": {"name": "dept", "max_length": 32, "budget": 12},
            "search": {
                "prompt_length": {"low": 2, "high": 10, "step": 2},
                "lr_prompt": {"low": 1e-9, "high": 1.0},
                "lr_lowrank": {"low": 1e-9, "high": 1.0},
                "lr_head": {"low": 1e-9, "high": 1.0},
            },
            "train": {
                "steps": 24,
                "batch_size": 16,
                "eval_every": 8,
                "warmup_steps": 2,
                "output_dir": str(tmp_path),
                "evaluate_test": False,
            },
            "resources": {"workers": 1, "cpus_per_worker": 1.5, "runner": "train"},  # a Ray Train worker to kill
            "sweep": {
                "trials": 2,
                "max_concurrent": 1,
                "driver_cpus": 0.25,
                "enqueue": [GOOD, FROZEN],
                "objective": {"metric": "train_loss", "mode": "min"},
                "scheduler": {"name": "asha", "grace_period": 8, "reduction_factor": 2},
            },
            "study": {"name": "record"},
            "tracking": {"uri": mlflow_store(tmp_path)},
        },
        kind=SweepSpec,
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("record")
    fault = tmp / "kill"
    fault.write_text("0 16")  # the first trial's worker dies right after reporting step 16, once
    spec = sweep_spec(tmp)
    ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        runtime_env=kill_after_report(fault),
    )
    try:
        outcome = run_sweep(spec)
    finally:
        ray.shutdown()
    return spec, outcome, fault


def mlflow_history(spec, metric: str) -> dict[int, list]:
    """Optuna trial number -> the metric's history in the trial's MLflow run."""
    client = MlflowClient(spec.tracking.uri)
    experiment = client.get_experiment_by_name("record").experiment_id
    runs = client.search_runs([experiment], "tags.`deptune.role` = 'trial'")
    return {int(r.data.tags["deptune.optuna_trial"]): client.get_metric_history(r.info.run_id, metric) for r in runs}


def test_a_killed_worker_and_an_asha_stop_leave_equal_records(swept):
    spec, outcome, fault = swept
    assert not fault.exists()  # the worker was killed
    trials = outcome.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    history = mlflow_history(spec, "train_loss")
    for trial in trials:
        mlflow_steps = [m.step for m in history[trial.number]]
        assert sorted(mlflow_steps) == sorted(trial.intermediate_values), trial.number  # each step once
        times = [m.timestamp / 1000 for m in history[trial.number]]
        assert trial.user_attrs["wall_seconds"] >= max(times) - min(times)  # the whole trial
        assert trial.user_attrs["cpu_seconds"] == pytest.approx(trial.user_attrs["wall_seconds"] * 1.75, abs=0.05)
    assert sorted(trials[0].intermediate_values) == [8, 16, 24]  # restarted from its checkpoint, no step twice
    assert sorted(trials[1].intermediate_values)[:2] == [8, 16]  # stopped at 16 (with what it logged after)
