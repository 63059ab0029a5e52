"""Ray Train on a real local Ray (2 CPUs, 127.0.0.1 only): DDP correctness, reports, checkpoints,
recovery from a killed worker, back-to-back runs, and a clear failure when workers cannot start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from deptune.cluster.trainer import ReportLog, build_trainer, read_report_log, run_on_ray
from deptune.specs import parse_spec
from faults import kill_after_report

pytestmark = pytest.mark.slow

REPORT_KEYS = {
    "step",
    "objective",
    "eval_accuracy",
    "eval_f1",
    "train_loss",
    "step_time_s",
    "tokens_per_s",
    "peak_memory_mb",
    "trainable_params",
    "best_objective",
    "best_step",
}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    control = tmp_path_factory.mktemp("fault") / "kill"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=kill_after_report(control, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="20"),
    )
    yield control
    ray.shutdown()


def make_spec(tmp_path: Path, workers: int = 1, steps: int = 6, eval_every: int = 3, cpus: float = 1.0, **train):
    return parse_spec(
        {
            "backbone": {"name": "tiny-bert", "tiny": {"dropout": 0.0}},
            "task": {"name": "synthetic", "synthetic_size": 400},
            "method": {"name": "dept", "prompt_length": 4, "rank": 3, "max_length": 32},
            "train": {
                "steps": steps,
                "batch_size": 16,
                "eval_every": eval_every,
                "warmup_steps": 1,
                "lr_prompt": 0.3,
                "lr_lowrank": 5e-3,
                "lr_head": 1e-2,
                "output_dir": str(tmp_path),
                **train,
            },
            "resources": {"workers": workers, "cpus_per_worker": cpus},
        }
    )


def fit(spec, name):
    """Fit, and return the result with every report (rank 0's metrics, restarts included) as `.reports`."""
    log = spec.train.output_dir / f"{name}.jsonl"
    result = build_trainer(spec, name, callbacks=[ReportLog(log)]).fit()
    result.reports = read_report_log(log)
    return result


def adapter_of(result) -> dict[str, torch.Tensor]:
    with result.checkpoint.as_directory() as path:
        return load_file(str(Path(path) / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def one_worker(ray_cluster, tmp_path_factory):
    """The reference run: one worker, 4 micro-batches accumulated on the 2 threads of the 2 CPUs it holds.
    Two workers, with or without a killed one, must end with its adapter."""
    return fit(make_spec(tmp_path_factory.mktemp("one"), steps=9, cpus=2.0, micro_batch_size=4), "one")


def test_two_gloo_workers_match_one_worker_report_everything_and_checkpoint_the_adapter(one_worker, tmp_path):
    one = one_worker
    two = fit(make_spec(tmp_path, workers=2, steps=9), "two")  # 8 examples per rank, one micro-batch each, 1 thread
    a, b = adapter_of(one), adapter_of(two)
    assert (
        a.keys()
        == b.keys()
        == {"prompt_embeddings", "lora_embedding_A", "lora_embedding_B", "classifier.weight", "classifier.bias"}
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert (a["lora_embedding_B"] != 0).any()  # it trained
    for result in (one, two):
        rows = result.reports
        assert [r["step"] for r in rows] == [3, 6, 9]
        assert all(REPORT_KEYS <= r.keys() for r in rows)
        assert "test_accuracy" in rows[-1]
    assert one.metrics["objective"] == pytest.approx(two.metrics["objective"])  # whole validation set on both
    assert [r["torch_threads"] for r in one.reports] == [2] * 3 and [r["torch_threads"] for r in two.reports] == [1] * 3
    assert_checkpoint_is_adapter_only_and_small(one)


def assert_checkpoint_is_adapter_only_and_small(result) -> None:
    with result.checkpoint.as_directory() as path:
        files = {f.name: f.stat().st_size for f in Path(path).iterdir()}
        tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "train_state.pt"}
    assert sum(files.values()) < 100_000  # kilobytes; the tiny backbone alone is ~440 kB
    assert sum(t.numel() for t in tensors.values()) == result.metrics["trainable_params"]


def test_killed_worker_resumes_from_the_last_checkpoint(ray_cluster, one_worker, tmp_path):
    uninterrupted = one_worker
    ray_cluster.write_text("1 3")  # rank 1 dies right after reporting step 3
    recovered = fit(make_spec(tmp_path, workers=2, steps=9), "killed")
    assert not ray_cluster.exists()  # the fault fired
    steps = [r["step"] for r in recovered.reports]
    assert steps == [3, 6, 9]  # the restarted group continued after step 3's checkpoint, not from 0
    a, b = adapter_of(uninterrupted), adapter_of(recovered)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_a_run_that_cannot_get_its_workers_fails_clearly(ray_cluster, tmp_path):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"3 worker\(s\).*need 3 CPU \(cluster has 2\)"):
        run_on_ray(make_spec(tmp_path, workers=3, batch_size=15))
    assert time.perf_counter() - started < 5  # before any worker starts
    spec = parse_spec(
        {
            **make_spec(tmp_path, workers=3, batch_size=15).model_dump(mode="json"),
            "resources": {"workers": 3, "wait_for_autoscaler": True},
        }
    )
    with pytest.raises(RuntimeError, match="could not start 3 worker"):
        run_on_ray(spec)  # no autoscaler here: Ray's start timeout (20 s in this cluster) ends it
    assert time.perf_counter() - started < 90


def test_the_same_spec_run_twice_trains_twice_and_each_run_gives_its_resources_back(ray_cluster, tmp_path):
    spec = make_spec(tmp_path, workers=2, steps=2, eval_every=1, evaluate_test=False)
    results = []
    for i in range(2):
        if i:
            time.sleep(1.1)  # run names are timestamped to the second
        results.append(run_on_ray(spec))  # the second is not a resume of the first run's storage
        deadline = time.time() + 10
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == 2  # worker group and placement group gone
    assert [h["step"] for h in results[0].history] == [h["step"] for h in results[1].history] == [1, 2]
    assert (tmp_path / "best" / "adapter_model.safetensors").is_file() and results[1].trainable_params > 0


# ----- MPT's source stage on Ray Train: the same loop, so the same data parallelism and restarts ----------------
SOURCES = ["synthetic_a", "synthetic_b"]


def source_data(tmp_path: Path, workers: int = 1, steps: int = 6) -> dict:
    fast = {
        "batch_size": 16,
        "warmup_steps": 1,
        "lr_prompt": 0.3,
        "lr_lowrank": 0.05,
        "lr_head": 0.05,
        "evaluate_test": False,
    }
    return {
        "backbone": {"name": "tiny-bert", "tiny": {"dropout": 0.0}},
        "source_tasks": [{"name": t, "synthetic_size": 200} for t in SOURCES],
        "method": {"name": "mpt", "prompt_length": 4, "max_length": 32},
        "teacher": {**{k: v for k, v in fast.items() if k != "lr_lowrank"}, "steps": 4, "eval_every": 4},  # PT
        "train": {**fast, "steps": steps, "eval_every": 3, "output_dir": str(tmp_path / "source")},
        # lambda 0: the task loss is a per-example mean, so 2 ranks sum exactly to 1 (the hidden-state MSE is a
        # per-token mean, which a split batch only approximates)
        "distill": {"weight": 0.0},
        "resources": {"workers": workers},
    }


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Both source tasks' teachers, trained once in this process."""
    from deptune.train.multitask import train_teacher

    spec = parse_spec(source_data(tmp_path_factory.mktemp("teachers")))
    return {task: train_teacher(spec, i, lambda m, d: None) for i, task in enumerate(spec.task_names)}


def fit_student_on_ray(spec, teacher_dirs, name):
    from deptune.cluster.trainer import _student_worker
    from deptune.cluster.trainer import fit as fit_run

    return fit_run(
        spec, name, loop=_student_worker, extra={"teachers": {task: str(path) for task, path in teacher_dirs.items()}}
    )


@pytest.fixture(scope="module")
def two_workers(ray_cluster, teachers, tmp_path_factory):
    """The student on 2 gloo workers, uninterrupted."""
    root = tmp_path_factory.mktemp("two")
    return fit_student_on_ray(parse_spec(source_data(root, workers=2)), teachers, "student-two"), root


def test_the_mpt_student_on_two_gloo_workers_matches_the_in_process_one(two_workers, teachers, tmp_path):
    from deptune.methods.io import read_tensors
    from deptune.train.multitask import train_student

    alone = train_student(parse_spec(source_data(tmp_path / "alone")), teachers, reporter=lambda m, d: None)
    two, root = two_workers
    a, b = read_tensors(alone.adapter_dir), read_tensors(two.adapter_dir)
    assert a.keys() == b.keys() == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert [r["step"] for r in two.history] == [r["step"] for r in alone.history] == [3, 6]
    for row in two.history:
        assert {f"{term}_{task}" for term in ("loss", "kl", "mse", "mix") for task in SOURCES} <= row.keys()
        assert row["paper_metric"] == pytest.approx(sum(row[f"eval_{t}_accuracy"] for t in SOURCES) / 2)
    assert two.best_metrics == alone.best_metrics
    assert_checkpoint_is_small(two.history, root)


def assert_checkpoint_is_small(history, root: Path) -> None:
    adapter = root / "source" / "best" / "adapter_model.safetensors"
    assert adapter.is_file() and adapter.stat().st_size < 20_000 and history[-1]["trainable_params"] > 0


def test_a_killed_mpt_student_worker_resumes_from_its_last_checkpoint(ray_cluster, two_workers, teachers, tmp_path):
    from deptune.methods.io import read_tensors

    clean, _ = two_workers
    ray_cluster.write_text("1 3")  # rank 1 dies right after reporting step 3
    killed = fit_student_on_ray(parse_spec(source_data(tmp_path / "killed", workers=2)), teachers, "student-killed")
    assert not ray_cluster.exists()  # the fault fired
    assert [r["step"] for r in killed.history] == [3, 6]  # continued after step 3's checkpoint, not from 0
    a, b = read_tensors(clean.adapter_dir), read_tensors(killed.adapter_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_the_cli_runs_the_source_stage_on_ray_and_its_name_resumes_it_after_a_driver_kill(ray_cluster, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    import yaml
    from typer.testing import CliRunner

    from deptune.cli import app
    from deptune.methods.record import read_record
    from deptune.train.multitask import finished_teacher, teacher_run

    data = source_data(tmp_path, steps=100)
    data["train"]["eval_every"] = 20
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump(data))
    student_log = tmp_path / "source" / "reports.jsonl"
    driver = subprocess.Popen(  # a driver on this cluster, SIGKILLed once the student has reported step 20
        [
            str(Path(sys.executable).parent / "deptune"),
            "mpt-source",
            str(path),
            "--name",
            "stage-a",
            "--address",
            ray.get_runtime_context().gcs_address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while (
        time.time() < deadline
        and driver.poll() is None
        and not (
            student_log.is_file()
            and any(json.loads(line)["step"] >= 20 for line in student_log.read_text().splitlines() if line)
        )
    ):
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    output = driver.communicate()[0]
    assert driver.returncode == -signal.SIGKILL, output  # killed mid-student, not finished
    assert all(f"teachers/{t}: step " in output for t in SOURCES), output  # the console follows each teacher's
    # reports (the student's too, but the kill may come before the view's next look at its file)
    teacher_files = {t: tmp_path / "source" / "teachers" / t / "best" / "adapter_model.safetensors" for t in SOURCES}
    written = {t: f.stat().st_mtime_ns for t, f in teacher_files.items()}
    killed_at = max(json.loads(line)["step"] for line in student_log.read_text().splitlines() if line)
    assert killed_at < 100
    again = CliRunner().invoke(app, ["mpt-source", str(path), "--name", "stage-a"])  # the driver's name resumes it
    assert again.exit_code == 0, again.output
    assert "(Ray Train, 1 worker(s))" in again.output and "source adapter:" in again.output
    assert not any(f"teachers/{t}: step" in again.output for t in SOURCES)  # both finished: kept, not retrained
    assert {t: f.stat().st_mtime_ns for t, f in teacher_files.items()} == written
    steps = [json.loads(line)["step"] for line in student_log.read_text().splitlines() if line]
    assert steps == sorted(set(steps)) and steps[-1] == 100, steps  # from a checkpoint, not from step 0
    record = read_record(tmp_path / "source" / "best")
    assert record.method == "mpt" and record.method_config["source_tasks"] == SOURCES
    spec = parse_spec(data)  # another stage's name (or none: a fresh, timestamped one) retrains them
    assert [finished_teacher(teacher_run(spec, i), "stage-b") for i in range(2)] == [None, None]
    assert finished_teacher(teacher_run(spec, 0), "stage-a") == teacher_files[SOURCES[0]].parent


def test_the_train_command_runs_on_ray_and_prints_the_best_validation_metrics(ray_cluster, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from deptune.cli import app

    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(make_spec(tmp_path, steps=2, eval_every=2, evaluate_test=False).model_dump(mode="json"))
    )
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    assert "(Ray Train, 1 worker(s))" in result.output and f"adapter: {tmp_path / 'best'}" in result.output
    best = next(line for line in result.output.splitlines() if line.startswith("best step 2: validation "))
    assert set(part.split("=")[0] for part in best.removeprefix("best step 2: validation ").split(", ")) == {
        "accuracy",
        "f1",
    }  # the task's metrics, not the evaluation's latency
