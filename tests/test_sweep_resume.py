"""`deptune sweep --resume` after the driver is killed (SIGKILL) mid-sweep: the killed driver leaves no process
of its local Ray, the execution finishes, trials finished before the kill are not re-run, the interrupted one
continues, none is left RUNNING, and every trial's record is whole (the study's intermediate values and the
MLflow run's history hold the same steps, each once; the cost covers both runs of the interrupted trial)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from studies import study_trials

from deptune.tracking.trial import PER_EVAL

pytestmark = pytest.mark.slow
DEPTUNE = [sys.executable, "-m", "deptune.cli"]


# per runner: (steps, eval_every) that make a trial last long enough (~15 s) to be killed mid-trial
LENGTHS = {"train": (40, 10), "tune": (6000, 1500)}


def spec_file(tmp_path: Path, runner: str) -> Path:
    steps, every = LENGTHS[runner]
    spec = {
        "backbone": {"name": "tiny-bert", "tiny": {"hidden_size": 32, "dropout": 0.0}},
        "task": {"name": "synthetic", "synthetic_size": 300},
        "method": {"name": "dept", "prompt_length": 4, "budget": 12, "max_length": 32},
        "search": {"prompt_length": {"low": 2, "high": 10, "step": 2}},
        "train": {"steps": steps, "batch_size": 16, "eval_every": every, "warmup_steps": 2, "lr_head": 0.01,
                  "output_dir": str(tmp_path / "run"), "evaluate_test": False},
        "resources": {"workers": 1, "cpus_per_worker": 1.5, "runner": runner},
        "sweep": {"trials": 2, "max_concurrent": 1, "driver_cpus": 0.25, "scheduler": {"name": "fifo"}},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / "resumable.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(study_url: str, condition, timeout_s: float = 300.0) -> list[optuna.trial.FrozenTrial]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        trials = study_trials(study_url, "resumable")  # read-only until the driver has created the study
        if trials and condition(trials):
            return trials
        time.sleep(1.0)
    raise TimeoutError("the sweep did not reach the expected state")


def live_processes_of_group(pgid: int) -> list[str]:
    """Processes (zombies aside) of process group `pgid`: the driver's session and what it started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            name, rest = (entry / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        fields = rest.split()
        if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(f"{entry.name} {name.split('(', 1)[1]}")
    return found


@pytest.mark.parametrize("runner", ["tune", "train"])
def test_resume_after_the_driver_is_killed(tmp_path, runner):
    path = spec_file(tmp_path, runner)
    steps, every = LENGTHS[runner]
    evaluations = list(range(every, steps + 1, every))
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen([*DEPTUNE, "sweep", str(path)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        before = wait_for(url, lambda ts: any(t.state.is_finished() for t in ts)
                          and any(t.state == TrialState.RUNNING for t in ts))
        time.sleep(5)  # past Tune's experiment-state snapshot (every 2 s) and into the running trial
        killed_at = time.time()
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone: its local Ray must not outlive it
        driver.wait()
        deadline = time.monotonic() + 20
        while live_processes_of_group(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert live_processes_of_group(driver.pid) == []  # no ray::DashboardAgent, ray::RuntimeEnvAgent, ...
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait()
    finished = {t.number: t.datetime_complete for t in before if t.state.is_finished()}
    interrupted = [t.number for t in before if t.state == TrialState.RUNNING]

    resumed = subprocess.run([*DEPTUNE, "sweep", str(path), "--resume"], env=env, capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "study resumable" in resumed.stdout  # the leaderboard
    trials = optuna.load_study(study_name="resumable", storage=url).get_trials()
    assert len(trials) == 2 and all(t.state.is_finished() for t in trials)
    assert {t.number: t.datetime_complete for t in trials if t.number in finished} == finished  # not re-run
    for number in interrupted:  # the trial running at the kill was continued, not replaced
        assert trials[number].state == TrialState.COMPLETE
        assert sorted(trials[number].intermediate_values) == evaluations
    assert {t.user_attrs["execution"] for t in trials} == {1}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resumable").experiment_id])
    roles = sorted((r.data.tags["deptune.role"], r.info.status) for r in runs)
    assert roles == [("sweep", "FINISHED")] + [("trial", "FINISHED")] * 2  # one parent, resumed, and its trials
    for run in (r for r in runs if r.data.tags["deptune.role"] == "trial"):
        trial = trials[int(run.data.tags["deptune.optuna_trial"])]
        history = client.get_metric_history(run.info.run_id, PER_EVAL)
        assert sorted(m.step for m in history) == sorted(trial.intermediate_values) == evaluations
        if trial.number in interrupted:  # its cost: both runs, not the resumed one alone
            before = [m.timestamp / 1000 for m in history if m.timestamp / 1000 < killed_at]
            after = [m.timestamp / 1000 for m in history if m.timestamp / 1000 >= killed_at]
            spans = (max(before) - min(before) if before else 0.0) + (max(after) - min(after) if after else 0.0)
            whole = (trial.datetime_complete - trial.datetime_start).total_seconds()
            assert spans <= trial.user_attrs["wall_seconds"] <= whole
            assert trial.user_attrs["wall_seconds"] > (max(after) - min(after) if after else 0.0) + 1.0

    again = subprocess.run([*DEPTUNE, "sweep", str(path), "--resume"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "nothing to resume" in again.stdout
