"""`deptune sweep --resume` after the driver is killed (SIGKILL) mid-sweep: the killed driver leaves no process
of its local Ray, the execution finishes, trials finished before the kill are not re-run, the interrupted one
continues, none is left RUNNING, and every trial's record is whole (the study's intermediate values and the
MLflow run's history hold the same steps, each once; the cost covers both runs of the interrupted trial)."""

from __future__ import annotations

import os
import re
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

from deptune.sweep.trainable import TRIAL_FOLDER_PREFIX
from deptune.tracking.trial import PER_EVAL
from stores import mlflow_store
from studies import study_trials

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
        "train": {
            "steps": steps,
            "batch_size": 16,
            "eval_every": every,
            "warmup_steps": 2,
            "lr_head": 0.01,
            "output_dir": str(tmp_path / "run"),
            "evaluate_test": False,
        },
        "resources": {"workers": 1, "cpus_per_worker": 1.5, "runner": runner},
        "sweep": {"trials": 2, "max_concurrent": 1, "driver_cpus": 0.25, "scheduler": {"name": "fifo"}},
        "tracking": {"uri": mlflow_store(tmp_path)},
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


def test_resume_after_the_driver_is_killed(tmp_path, runner="train"):
    """A trial on Ray Train (its run named after the trial resumes from its own checkpoints); the Tune-actor
    runner is killed at several moments below."""
    path = spec_file(tmp_path, runner)
    steps, every = LENGTHS[runner]
    evaluations = list(range(every, steps + 1, every))
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(
        [*DEPTUNE, "sweep", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        before = wait_for(
            url, lambda ts: any(t.state.is_finished() for t in ts) and any(t.state == TrialState.RUNNING for t in ts)
        )
        time.sleep(5)  # past Tune's experiment-state snapshot (every 2 s) and into the running trial
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone: its local Ray must not outlive it
        driver.wait()
        deadline = time.monotonic() + 20
        while live_processes_of_group(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert live_processes_of_group(driver.pid) == []  # no ray::DashboardAgent, ray::RuntimeEnvAgent, ...
        reaped_at = time.time()  # the first run's last evaluation (its worker may outlive the driver a moment)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait()
    finished = {t.number: t.datetime_complete for t in before if t.state.is_finished()}
    interrupted = [t.number for t in before if t.state == TrialState.RUNNING]

    resumed = subprocess.run(
        [*DEPTUNE, "sweep", str(path), "--resume"], env=env, capture_output=True, text=True, timeout=400
    )
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
            before = [m.timestamp / 1000 for m in history if m.timestamp / 1000 < reaped_at]
            after = [m.timestamp / 1000 for m in history if m.timestamp / 1000 >= reaped_at]
            spans = (max(before) - min(before) if before else 0.0) + (max(after) - min(after) if after else 0.0)
            whole = (trial.datetime_complete - trial.datetime_start).total_seconds()
            assert spans <= trial.user_attrs["wall_seconds"] <= whole
            assert trial.user_attrs["wall_seconds"] > (max(after) - min(after) if after else 0.0) + 1.0

    again = subprocess.run(
        [*DEPTUNE, "sweep", str(path), "--resume"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "nothing to resume" in again.stdout


# ----- kills at chosen moments, and ASHA's decisions across them --------------------------------------------------
GOOD = (
    {"prompt_length": 4, "lr_prompt": 0.3, "lr_lowrank": 1e-3},
    {"prompt_length": 8, "lr_prompt": 0.2, "lr_lowrank": 5e-4},
    {"prompt_length": 6, "lr_prompt": 0.4, "lr_lowrank": 2e-3},
    {"prompt_length": 2, "lr_prompt": 0.35, "lr_lowrank": 1e-3},
)
BAD = (
    {"prompt_length": 6, "lr_prompt": 1e-6, "lr_lowrank": 1e-6},
    {"prompt_length": 2, "lr_prompt": 1e-5, "lr_lowrank": 1e-5},
)
ENQUEUED = [GOOD[0], BAD[0], GOOD[1], BAD[1], GOOD[2], GOOD[3]]  # after the first stop, trials that train long


def asha_spec(tmp_path: Path, name: str) -> Path:
    """Six fixed configurations (two that barely learn), one at a time, ASHA with rungs at 20, 40, 80, 160."""
    spec = {
        "backbone": {"name": "tiny-bert", "tiny": {"hidden_size": 32, "dropout": 0.0}},
        "task": {"name": "synthetic", "synthetic_size": 300},
        "method": {"name": "dept", "budget": 12, "max_length": 32},
        "search": {
            "prompt_length": {"low": 2, "high": 10, "step": 2},
            "lr_prompt": {"low": 1e-6, "high": 0.5},
            "lr_lowrank": {"low": 1e-6, "high": 1e-2},
        },
        "train": {
            "steps": 320,
            "batch_size": 16,
            "eval_every": 10,
            "warmup_steps": 2,
            "lr_head": 0.01,
            "output_dir": str(tmp_path / name),
            "evaluate_test": False,
        },
        "resources": {"workers": 1, "cpus_per_worker": 1.5, "runner": "tune"},
        "sweep": {
            "trials": len(ENQUEUED),
            "max_concurrent": 1,
            "driver_cpus": 0.25,
            "enqueue": ENQUEUED,
            "seed": 7,
            "objective": {"metric": "train_loss", "mode": "min"},
            "scheduler": {"name": "asha", "grace_period": 20, "reduction_factor": 2},
        },
        "study": {"name": "asha"},
        "tracking": {"uri": mlflow_store(tmp_path / name)},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def checkpoints(run: Path) -> set[Path]:
    return set(run.glob(f"ray/asha-001/{TRIAL_FOLDER_PREFIX}*/checkpoint_*"))


def settled(run: Path) -> bool:
    """A trial has checkpoints that Tune has certainly saved in its state (a snapshot every 2 s): a kill now
    interrupts a trial that has a checkpoint to resume from."""
    found = checkpoints(run)
    return any(
        sum(c.parent == trial for c in found) >= 2
        and time.time() - min(c.stat().st_mtime for c in found if c.parent == trial) > 4
        for trial in {c.parent for c in found}
    )


def kill_when(driver: subprocess.Popen, run: Path, moment: str, ready=lambda: True, timeout_s: float = 300) -> None:
    """SIGKILL the driver (its local Ray dies with it) at a moment of a trial's life: `after-checkpoint`, the
    instant a new checkpoint folder appears; `after-deletion`, the instant one is deleted (retention keeps the
    best and the latest); `between`, halfway between two checkpoints."""
    seen, deadline = checkpoints(run), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the sweep ended before the kill: {driver.args}"
        now = checkpoints(run)
        changed = (moment != "after-deletion" and now - seen) or (moment == "after-deletion" and seen - now)
        if changed and ready():
            if moment == "between":
                time.sleep(0.15)
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            return
        seen = now
        time.sleep(0.01)
    raise TimeoutError(f"no {moment} moment")


RUNGS = (20, 40, 80, 160)


def outcome(url: str) -> list[tuple]:
    """Per trial: its parameters, state, and the rung ASHA stopped it at (None: it trained to the end). A
    stopped trial may have reported one evaluation in flight after the decision: at most one step past."""
    found = []
    for t in optuna.load_study(study_name="asha", storage=url).get_trials():
        last = max(t.intermediate_values, default=0)  # none: the comparison below says which trial
        rung = max((r for r in RUNGS if r <= last), default=0) if t.state == TrialState.PRUNED else None
        assert rung is None or last - rung <= 10, (t.number, sorted(t.intermediate_values))  # stopped at a rung
        found.append((t.number, t.params, t.state.name, rung))
    return found


def test_kills_at_every_moment_of_a_trial_resume_and_asha_decides_as_without_them(tmp_path):
    """The same sweep twice: once without interruption, once with its driver SIGKILLed three times (just after
    a checkpoint, just after a checkpoint was deleted, between two) and resumed each time. Every interrupted
    trial resumes (Tune's saved state may name a checkpoint deleted since: the newest whole one is taken), and
    ASHA's rungs are rebuilt from the journals: the same trials stop at the same rungs, none at a step that
    is no rung, and every trial's record is whole."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    plain = subprocess.run(
        [*DEPTUNE, "sweep", str(asha_spec(tmp_path, "plain"))], env=env, capture_output=True, text=True, timeout=600
    )
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    expected = outcome(f"sqlite:///{tmp_path / 'plain' / 'study.db'}")
    assert {state for _, _, state, _ in expected} == {"COMPLETE", "PRUNED"}, expected  # ASHA stopped some
    console = plain.stdout + plain.stderr  # no terminal: plain lines, each trial's end, the leaderboard, no noise
    assert len(console.splitlines()) <= 40 and "\x1b[" not in console, console
    for number, _, state, _ in expected:
        ended = "finished" if state == "COMPLETE" else r"stopped by the scheduler at step \d+/320"
        assert re.search(rf"^trial {number} {ended}\b", console, re.M), (number, state, console)
    assert re.search(r"study asha: \d+ complete, \d+ pruned", console), console
    for noise in ("WARNING", "INFO", "Trial status", "(train_trial pid=", "╭"):
        assert noise not in console, (noise, console)
    assert Path(re.search(r"^log: (\S+)$", console, re.M).group(1)).stat().st_size > 0

    path, run = asha_spec(tmp_path, "killed"), tmp_path / "killed"
    url = f"sqlite:///{run / 'study.db'}"
    env["DEPTUNE_CHECKPOINT_GRACE_S"] = "5"  # superseded checkpoints go sooner: deletions to kill just after
    interrupted = []
    pruned = lambda: any(t.state == TrialState.PRUNED for t in study_trials(url, "asha"))  # noqa: E731
    for i, moment in enumerate(("after-checkpoint", "after-deletion", "between")):
        log = (tmp_path / f"driver-{i}.log").open("w")
        driver = subprocess.Popen(
            [*DEPTUNE, "sweep", str(path), *(["--resume"] if i else [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:  # the last kill once ASHA has stopped a trial: a resumed ASHA must remember its rungs
            kill_when(driver, run, moment, ready=lambda last=i == 2: settled(run) and (not last or pruned()))
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        interrupted += [t.number for t in study_trials(url, "asha") if t.state == TrialState.RUNNING]
    resumed = subprocess.run(
        [*DEPTUNE, "sweep", str(path), "--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    got = outcome(url)
    assert got == expected, (got, expected)  # the same trials stopped at the same rungs
    assert interrupted, "no kill found a trial running"
    trials = optuna.load_study(study_name="asha", storage=url).get_trials()
    assert not [t.number for t in trials if t.state == TrialState.FAIL]
    continued = [n for n in set(interrupted) if trials[n].state == TrialState.COMPLETE]  # (a stopped one awaits
    assert continued  # its PRUNED verdict a few seconds: RUNNING in the study, but nothing left to resume)
    restarts = {n: trials[n].user_attrs["resumed_from"] for n in continued}
    assert all(steps[0] == 0 and len(steps) > 1 for steps in restarts.values()), restarts  # each was resumed
    # from a checkpoint, not restarted (a trial killed before its first checkpoint starts at 0 again: kills
    # come at another trial's checkpoint moments)
    assert any(step > 0 for steps in restarts.values() for step in steps[1:]), restarts
    for trial_dir in (run / "ray" / "asha-001").glob(
        f"{TRIAL_FOLDER_PREFIX}*"
    ):  # retention: the latest + 2 improvements
        assert 1 <= len(list(trial_dir.glob("checkpoint_*"))) <= 3, sorted(trial_dir.glob("checkpoint_*"))
    for trial in trials:  # the best adapter's checkpoint is one retention kept
        if trial.state == TrialState.COMPLETE or trial.user_attrs.get("adapter_path"):
            assert Path(trial.user_attrs["adapter_path"], "adapter_model.safetensors").is_file(), trial.user_attrs
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    for mlflow_run in client.search_runs(
        [client.get_experiment_by_name("asha").experiment_id], "tags.`deptune.role` = 'trial'"
    ):
        trial = trials[int(mlflow_run.data.tags["deptune.optuna_trial"])]
        steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, PER_EVAL)]
        assert steps == sorted(set(steps)) and set(steps) >= set(trial.intermediate_values), (trial.number, steps)
