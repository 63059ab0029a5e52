"""MLflow tracking against a real `mlflow server` on 127.0.0.1 (sqlite backend, served artifacts):
a sweep's parent and child runs through the REST API, statuses for finished, ASHA-stopped and failed trials,
the parent's plots and leaderboard, the registry with lineage tags and a `champion` that moves only on
improvement (also under racing promotions), the pyfunc model predicting labels, and the journal that keeps
writes while the server is away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import ray
import requests
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from deptune.cli import app
from deptune.methods.record import read_record
from deptune.registry import promotion as registry
from deptune.spec_base import SpecError
from deptune.specs import parse_spec
from deptune.sweep.config import SweepSpec
from deptune.sweep.driver import run_sweep
from deptune.sweep.tracker import trial_journals_for
from deptune.tracking.journal import DriverSender, RunJournal, flush_all, journals
from deptune.tracking.sources import localize_sources
from stores import mlflow_store

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            mlflow_store(folder),
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--serve-artifacts",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return server
        except requests.RequestException:
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError("mlflow server did not start")


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


class Server:
    """A real `mlflow server` that a test can stop and start again on the same port and store."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_server(self.folder, self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            self.process = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("mlflow"))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(mlflow_server) -> str:
    return mlflow_server.uri


GOOD = {"prompt_length": 4, "lr_prompt": 0.05, "lr_lowrank": 1e-3, "lr_head": 0.01}


def sweep_spec(tmp_path: Path, uri: str, name: str, enqueue: list[dict]) -> SweepSpec:
    """ASHA (rungs at steps 8 and 16) on the train loss. The same seed gives every trial the same batches:
    at step 16 a trial whose learning rates are ~0 has a higher loss (0.716) than one that learns (0.673),
    and is stopped there, 8 steps before the end. (At step 8 the learning trial's warm-up still costs it:
    0.705 against 0.691, so that rung lets both go on.)"""
    return parse_spec(
        {
            "backbone": {"name": "tiny-bert", "tiny": {"hidden_size": 32, "max_positions": 64, "dropout": 0.0}},
            "task": {"name": "synthetic", "synthetic_size": 300},
            "method": {"name": "dept", "max_length": 32, "budget": 12},
            "search": {
                "prompt_length": {"low": 2, "high": 10, "step": 2},
                "lr_prompt": {"low": 1e-9, "high": 1e30},
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
            "resources": {"workers": 1, "cpus_per_worker": 1.5},
            "sweep": {
                "trials": len(enqueue),
                "max_concurrent": 1,
                "driver_cpus": 0.25,
                "enqueue": enqueue,
                "objective": {"metric": "train_loss", "mode": "min"},
                "scheduler": {"name": "asha", "grace_period": 8, "reduction_factor": 2},
            },
            "study": {"name": name, "storage": f"sqlite:///{tmp_path}/study.db"},
            "tracking": {"uri": uri, "registered_model": f"{name}-model"},
        },
        kind=SweepSpec,
    )


@pytest.fixture(scope="module")
def swept(server, tmp_path_factory):
    """One sweep: a trial that learns (FINISHED), one that diverges (FAILED), one ASHA stops (FINISHED, state PRUNED)."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = sweep_spec(
        tmp,
        server,
        "tracked",
        [GOOD, {**GOOD, "lr_prompt": 1e30}, {**GOOD, "lr_prompt": 1e-9, "lr_lowrank": 1e-9, "lr_head": 1e-9}],
    )
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
    try:
        outcome = run_sweep(spec)
    finally:
        ray.shutdown()
    return spec, outcome


def test_runs_statuses_params_metrics_and_tags_through_the_rest_api(server, swept):
    spec, outcome = swept
    states = [t.state for t in outcome.study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED], outcome.study.get_trials()
    experiment = requests.get(
        f"{server}/api/2.0/mlflow/experiments/get-by-name", timeout=10, params={"experiment_name": "tracked"}
    ).json()["experiment"]
    runs = requests.post(
        f"{server}/api/2.0/mlflow/runs/search", timeout=10, json={"experiment_ids": [experiment["experiment_id"]]}
    ).json()["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("deptune.role") == "sweep"]
    children = {t["deptune.optuna_trial"]: (r, t) for r, t in zip(runs, tags) if t.get("deptune.role") == "trial"}
    assert len(parents) == 1 and sorted(children) == ["0", "1", "2"]
    parent_id = parents[0]["info"]["run_id"]
    assert parent_id == outcome.tracking.parent_run_id and parents[0]["info"]["status"] == "FINISHED"
    # a stopped trial is no failure: FINISHED, its state PRUNED (MLflow draws KILLED with FAILED's red cross)
    statuses = {k: (children[k][0]["info"]["status"], children[k][1]["deptune.state"]) for k in children}
    assert statuses == {"0": ("FINISHED", "COMPLETE"), "1": ("FAILED", "FAIL"), "2": ("FINISHED", "PRUNED")}
    assert "non-finite loss" in children["1"][1]["deptune.reason"]
    assert "stopped at step 16 of 24" in children["2"][1]["deptune.reason"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    for run, tag in children.values():
        assert tag["mlflow.parentRunId"] == parent_id
        assert tag["deptune.sweep"] == "tracked-001" and tag["deptune.study"] == "tracked"
        assert tag["deptune.git_commit"] == commit and len(tag["deptune.spec_hash"]) == 16
        assert len(tag["deptune.dataset_fingerprint"]) == 16 and tag["deptune.ray_trial_id"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        m, r = int(params["prompt_length"]), int(params["rank"])
        assert params["budget"] == "12" and m * 32 + r * 64 <= 12 * 32 and r == (12 - m) * 32 // 64
        assert {"lr_prompt", "lr_lowrank", "backbone", "task", "method", "seed", "batch_size", "steps"} <= params.keys()
        for key in ("lr_prompt", "lr_lowrank", "lr_head"):  # readable: 4 significant digits, the study keeps all
            assert params[key] == str(float(f"{float(params[key]):.4g}")), params[key]
    good, _ = children["0"]
    assert {p["key"]: p["value"] for p in good["data"]["params"]}["trainable_params"] == str(12 * 32 + 32 * 2 + 2)
    history = requests.get(
        f"{server}/api/2.0/mlflow/metrics/get-history",
        timeout=10,
        params={"run_id": good["info"]["run_id"], "metric_key": "objective_per_eval"},
    ).json()["metrics"]
    assert [h["step"] for h in history] == [8, 16, 24]
    metrics = {m["key"] for m in good["data"]["metrics"]}
    assert {
        "objective_per_eval",
        "best_objective",
        "best_step",
        "eval_accuracy",
        "train_loss",
        "tokens_per_s",
        "step_time_s",
        "peak_memory_mb",
        "cpu_seconds",
    } <= metrics
    assert "objective" not in metrics and "gpu_seconds" not in metrics  # a CPU sweep: no GPU-seconds
    assert "trainable_params" not in metrics and "torch_threads" not in metrics  # constants: params, not curves
    killed = MlflowClient(server).get_metric_history(children["2"][0]["info"]["run_id"], "objective_per_eval")
    assert [m.step for m in killed][:2] == [8, 16]  # its curve up to the stop (rank 0 may log one more
    # evaluation before Ray Train's controller, polling every 0.5 s, ends the worker)


def test_parent_holds_leaderboard_plots_and_summary(server, swept):
    _, outcome = swept
    client = MlflowClient(server)
    parent = client.get_run(outcome.tracking.parent_run_id)
    assert parent.data.metrics["trials_completed"] == 1 and parent.data.metrics["trials_failed"] == 1
    assert parent.data.metrics["trials_stopped"] == 1 and parent.data.metrics["cpu_seconds"] > 0
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {
        "plots/optimization_history.png",
        "plots/parallel_coordinate.png",
        "plots/slice.png",
        "plots/optuna_plots.html",
    } <= files
    board = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="leaderboard.csv", tracking_uri=server
        )
    )
    assert list(board["state"]) == ["COMPLETE", "PRUNED", "FAIL"] and list(board["number"]) == [0, 2, 1]
    html = Path(
        mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="plots/optuna_plots.html", tracking_uri=server
        )
    )
    assert "cdn.plot.ly" not in html.read_text()[:5000] and html.stat().st_size > 1_000_000  # plotly.js embedded

    out = CliRunner().invoke(app, ["report", "tracked", "--uri", server, "--metric", "train_loss", "--mode", "min"])
    assert out.exit_code == 0 and "trial-000" in out.output and "PRUNED" in out.output and "FAILED" in out.output


def test_registered_champion_predicts_and_moves_only_on_improvement(server, swept, tmp_path):
    _, outcome = swept
    promotion = outcome.tracking.promotion
    assert promotion is not None and promotion.champion and promotion.model == "tracked-model"
    client = MlflowClient(server)
    version = client.get_model_version("tracked-model", promotion.version)
    assert version.tags["deptune.sweep"] == "tracked-001" and version.tags["deptune.optuna_trial"] == "0"
    assert version.tags["deptune.metric"] == "train_loss" and version.tags["deptune.role"] == "champion"
    assert version.run_id == version.tags["deptune.run_id"]

    mlflow.set_tracking_uri(server)
    model = mlflow.pyfunc.load_model("models:/tracked-model@champion")
    texts = ["the movie was good great", "awful bad day", "a cold dull song"]
    labels = model.predict(pd.DataFrame({"sentence": texts}))
    assert len(labels) == 3 and set(labels["label"]) <= {"0", "1"}

    # a worse adapter (the ASHA-stopped trial) and then a better one (the finished trial) on a fresh model
    experiment = client.get_run(version.run_id).info.experiment_id
    by_trial = {
        r.data.tags["deptune.optuna_trial"]: r.info.run_id
        for r in client.search_runs([experiment], "tags.`deptune.role` = 'trial'")
    }
    lock = f"sqlite:///{tmp_path}/locks.db"
    worse = registry.promote(by_trial["2"], "race", "train_loss", "min", server, lock)
    better = registry.promote(by_trial["0"], "race", "train_loss", "min", server, lock)
    again = registry.promote(by_trial["2"], "race", "train_loss", "min", server, lock)
    assert worse.champion and better.champion and not again.champion
    assert client.get_model_version_by_alias("race", "champion").version == better.version
    assert client.get_model_version("race", again.version).tags["deptune.role"] == "challenger"

    # two promotions racing on a new model: whatever the order, the better one ends up champion
    results = {}
    threads = [
        threading.Thread(
            target=lambda k=k: results.__setitem__(
                k, registry.promote(by_trial[k], "raced", "train_loss", "min", server, lock)
            )
        )
        for k in ("2", "0")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.get_model_version_by_alias("raced", "champion").version == results["0"].version


def test_a_registered_adapter_is_a_transfer_source(server, swept, tmp_path):
    spec, outcome = swept

    def named(ref):
        return spec.model_copy(
            update={
                "method": spec.method.model_copy(update={"init_from": ref}),
                "train": spec.train.model_copy(update={"output_dir": tmp_path}),
            }
        )

    local = localize_sources(named("models:/tracked-model@champion"), server, "spec.yaml")
    folder = local.method.init_from
    assert tmp_path / "sources" in folder.parents
    record = read_record(folder)
    best = outcome.study.trials[0]
    assert (record.method, record.prompt_length, record.rank) == (
        "dept",
        best.params["prompt_length"],
        best.user_attrs["rank"],
    )
    with pytest.raises(SpecError, match=r"method\.init_from: cannot fetch models:/no-such-model/1"):
        localize_sources(named("models:/no-such-model/1"), server, "spec.yaml")


def test_an_unreachable_tracking_server_fails_before_ray(tmp_path):
    spec = sweep_spec(tmp_path, f"http://127.0.0.1:{free_port()}", "unreachable", [GOOD])
    with pytest.raises(SpecError, match=r"tracking\.uri: MLflow at http://127\.0\.0\.1:\d+ cannot be reached"):
        run_sweep(spec)
    assert not ray.is_initialized()


def test_the_journal_keeps_writes_while_the_server_is_away(mlflow_server, tmp_path):
    """Last in this module: it stops the module's server and starts it again."""
    uri = mlflow_server.uri
    experiment = MlflowClient(uri).create_experiment("journal")
    journal = RunJournal(tmp_path / "j" / "t1", uri)
    journal.start(experiment, "trial", find_by={"deptune.ray_trial_id": "t1"}, tags={"deptune.role": "trial"})
    journal.metrics({"objective": 0.5}, step=1)
    assert journal.pending() == 0 and journal.run_id
    mlflow_server.stop()
    journal.metrics({"objective": 0.6}, step=2)  # the server is gone: kept, training goes on
    journal.metrics({"objective": 0.7}, step=3)
    journal.end("FINISHED")
    assert journal.pending() == 3 and journal.last_error
    assert flush_all(tmp_path / "j", uri)[0].startswith(f"3 write(s) of run {journal.run_id} kept in ")
    mlflow_server.start()  # back, with the same store
    assert flush_all(tmp_path / "j", uri) == []
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(journal.run_id, "objective")] == [
        (1, 0.5),
        (2, 0.6),
        (3, 0.7),
    ]
    assert client.get_run(journal.run_id).info.status == "FINISHED"


EXIT_WITHOUT_STOP = """
import atexit, sys, threading
def senders_left():  # registered first, so it runs after the journal module's exit hook
    left = [t.name for t in threading.enumerate() if t.name == "deptune-driver-sender"]
    print("left:", left, flush=True)
atexit.register(senders_left)
from deptune.tracking.journal import DriverSender
DriverSender(sys.argv[1], sys.argv[2], interval_s=0.05)
print("alive:", [t.name for t in threading.enumerate() if t.name == "deptune-driver-sender"], flush=True)
"""


def test_a_driver_that_exits_without_stopping_its_sender_halts_the_thread_first(tmp_path):
    """Its thread lists the storage through pyarrow every interval: left to run into the interpreter's
    shutdown, it can crash the exiting process after the sweep's work is done."""
    run = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_STOP, str(tmp_path), "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["alive: ['deptune-driver-sender']", "left: []"], run.stdout


def test_a_trials_journal_is_sent_by_the_driver_alone_in_order(tmp_path):
    """A trial only writes its journal's files (no MLflow call: its URI here answers nothing); the driver
    sends it, in order, at once or from its thread; an artifact travels inside the journal and its copy goes
    once sent; a new driver continues from what the last one recorded as sent."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = MlflowClient(uri).create_experiment("left")
    root = tmp_path / "journals"
    journal = RunJournal(root / "t1", f"http://127.0.0.1:{free_port()}", send="driver")
    journal.start(experiment, "trial", find_by={"deptune.ray_trial_id": "t1"}, tags={"deptune.role": "trial"})
    journal.metrics({"objective": 0.5}, step=1)
    assert journal.pending() == 2 and journal.run_id is None and journal.last_error is None
    (root / "t1" / "ops" / "00000003.json.tmp-1-2").write_text('{"op": "metr')  # another process's, not done
    assert journal.pending() == 2
    sender = DriverSender(root, uri, interval_s=3600)  # its thread waits: sent by `send` first
    assert sender.send(str(root / "t1")) and journal.run_id
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "train_state.pt").write_text("optimizer")
    journal.artifacts(adapter, "adapter", skip=("train_state.pt",))
    (adapter / "adapter_config.json").write_text('{"rewritten": true}')  # the trial's next improvement
    journal.metrics({"objective": 0.7}, step=3)
    restarted = RunJournal(root / "t1", "unused", send="driver")  # a trial restarted elsewhere continues it
    restarted.metrics({"objective": 0.8}, step=4)
    sender.stop()  # sends what is left once
    assert journal.pending() == 0 and restarted.pending() == 0
    client = MlflowClient(uri)
    history = client.get_metric_history(journal.run_id, "objective")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (3, 0.7), (4, 0.8)]
    assert [a.path for a in client.list_artifacts(journal.run_id, "adapter")] == ["adapter/adapter_config.json"]
    sent = Path(client.download_artifacts(journal.run_id, "adapter/adapter_config.json", str(tmp_path / "dl")))
    assert sent.read_text() == "{}"  # the copy made at the write, not the file as it is now
    assert not (root / "t1" / "files").exists() or not any((root / "t1" / "files").iterdir())
    again = DriverSender(root, uri, interval_s=3600)
    assert again.send(str(root / "t1"))  # a new driver: nothing sent twice
    again.halt()
    assert len(client.get_metric_history(journal.run_id, "objective")) == 3


def test_the_trials_journals_live_on_the_sweeps_storage_and_were_sent_whole(server, swept):
    """The trials' journals are on the Ray storage (where every node reaches them), each sent in full, and
    their artifact copies gone once sent."""
    spec, outcome = swept
    root = trial_journals_for(spec, outcome.execution)
    assert root.startswith(spec.train.ray_storage())
    found = journals(root)
    assert len(found) == 3
    client = MlflowClient(server)
    for location in found:
        journal = RunJournal(location, server)
        assert journal.pending() == 0 and journal.run_id
        assert not list((Path(location) / "files").glob("*"))
        logged = sorted(step for step, metrics in journal.logged_metrics().items() if "objective_per_eval" in metrics)
        assert sorted(m.step for m in client.get_metric_history(journal.run_id, "objective_per_eval")) == logged


def trial_mlflow_runs(server: str, experiment: str) -> dict[int, object]:
    client = MlflowClient(server)
    found = client.get_experiment_by_name(experiment)
    return {
        int(r.data.tags["deptune.optuna_trial"]): r
        for r in client.search_runs([found.experiment_id], "tags.`deptune.role` = 'trial'")
    }


def test_trial_runs_show_the_best_objective_and_the_studys_state(server, swept):
    """The headline metric is what the study ranked (the best train loss and its step), not the last
    evaluation; ASHA stops read PRUNED (tag, name, description), apart from failures."""
    _, outcome = swept
    client, runs = MlflowClient(server), trial_mlflow_runs(server, "tracked")
    for trial in outcome.study.get_trials():
        run = runs[trial.number]
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["deptune.state"] == trial.state.name and tags["deptune.optuna_state"] == trial.state.name
        assert trial.state.name in tags["mlflow.note.content"]
        curve = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
        if trial.state == TrialState.COMPLETE:
            assert run.info.run_name == f"trial-{trial.number:03d}"
            assert metrics["best_objective"] == pytest.approx(trial.values[0]) == pytest.approx(min(curve))
            assert metrics["best_step"] == trial.user_attrs["best_step"]
            assert len(curve) == 3
            assert "stopped_at_step" not in metrics
        elif trial.state == TrialState.PRUNED:
            assert run.info.run_name == f"trial-{trial.number:03d} (stopped early)"
            assert "not a failure" in tags["mlflow.note.content"]
            # the study's value, even if rank 0 logged an evaluation after ASHA's stop
            assert metrics["best_objective"] == pytest.approx(min(trial.intermediate_values.values()))
            assert min(curve) <= metrics["best_objective"]
            # the stop step is a column (a summary at step 0), and no point lies past the last step it reached
            reached = [m.step for m in client.get_metric_history(run.info.run_id, "objective_per_eval")]
            assert metrics["stopped_at_step"] == max(reached) < 24
            for key in ("best_objective", "best_step"):
                assert max(m.step for m in client.get_metric_history(run.info.run_id, key)) == max(reached)
        else:
            assert run.info.run_name == f"trial-{trial.number:03d} (failed)" and "best_objective" not in metrics
        for key in ("cpu_seconds", "wall_seconds"):  # summaries: one point at step 0
            if key in metrics:
                assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0]
    pruned = client.search_runs([runs[0].info.experiment_id], "tags.`deptune.state` = 'PRUNED'")
    assert [r.data.tags["deptune.optuna_trial"] for r in pruned] == ["2"]


def test_parent_links_the_best_trial_and_logs_the_effective_search(server, swept):
    spec, outcome = swept
    client, runs = MlflowClient(server), trial_mlflow_runs(server, "tracked")
    parent = client.get_run(outcome.tracking.parent_run_id)
    best = outcome.study.best_trial
    assert parent.data.tags["deptune.best_run_id"] == runs[best.number].info.run_id
    assert parent.data.tags["deptune.best_trial"] == str(best.number)
    link = f"[trial-{best.number:03d}](#/experiments/{parent.info.experiment_id}/runs/{runs[best.number].info.run_id}?workflowType=machine_learning)"
    assert link in parent.data.tags["mlflow.note.content"]
    search = json.loads(parent.data.params["search"])
    assert search["prompt_length"] == {"low": 2, "high": 10, "step": 2, "log": False}
    assert search["lr_prompt"]["log"] is True and search["rank"] == "derived from prompt_length and the budget"
    assert parent.data.params["sweep_seed"] == "0" and parent.data.params["sampler_seed"] == str(outcome.execution.seed)
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "best_objective")] == [0]
    assert "gpu_seconds" not in parent.data.metrics


def test_leaderboard_has_a_column_per_objective_and_runs_that_exist(server, swept):
    _, outcome = swept
    client = MlflowClient(server)
    board = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=outcome.tracking.parent_run_id, artifact_path="leaderboard.csv", tracking_uri=server
        )
    )
    assert "values" not in board.columns and "adapter" not in board.columns and "gpu_seconds" not in board.columns
    assert {"train_loss", "run_id", "run_name", "state", "adapter_uri", "registered_model"} <= set(board.columns)
    # the objective and the hyperparameters first, every learning rate filled
    assert list(board.columns[:6]) == ["train_loss", "prompt_length", "rank", "lr_head", "lr_lowrank", "lr_prompt"]
    assert board[["lr_head", "lr_lowrank", "lr_prompt"]].notna().all().all()
    trials = {t.number: t for t in outcome.study.get_trials()}
    for row in board.to_dict("records"):
        run = client.get_run(row["run_id"])  # exists
        assert run.info.run_name == row["run_name"] and run.data.tags["deptune.state"] == row["state"]
        assert row["adapter_uri"] == f"{run.info.artifact_uri}/adapter"
        assert row["adapter_uri"].startswith("mlflow-artifacts:")
        trial = trials[row["number"]]
        if trial.state == TrialState.COMPLETE:
            assert row["train_loss"] == pytest.approx(trial.values[0])
        elif trial.state == TrialState.PRUNED:
            assert row["train_loss"] == pytest.approx(min(trial.intermediate_values.values()))
    registered = board.dropna(subset=["registered_model"])
    assert list(registered["registered_model"]) == [outcome.tracking.promotion.uri]
    assert list(registered["number"]) == [outcome.study.best_trial.number]


def test_plots_are_built_from_every_trial_that_reported(server, swept):
    """2 of 3 trials reported (one finished, one stopped by ASHA; the diverged one never evaluated): each plot's
    data holds both, the stopped one marked, rank among the dimensions."""
    _, outcome = swept

    def figure(name):
        return json.loads(
            Path(
                mlflow.artifacts.download_artifacts(
                    run_id=outcome.tracking.parent_run_id, artifact_path=f"plots/{name}.json", tracking_uri=server
                )
            ).read_text()
        )

    history = {t.get("name"): t for t in figure("optimization_history")["data"]}
    assert len(history["train_loss"]["x"]) == 2 and sorted(history["train_loss"]["x"]) == [0, 2]
    assert history["stopped early (best value before the stop)"]["x"] == [2]
    pruned = outcome.study.trials[2]
    best_before_stop = min(pruned.intermediate_values.values())
    assert history["stopped early (best value before the stop)"]["y"] == [pytest.approx(best_before_stop)]
    lines = [t for t in figure("parallel_coordinate")["data"] if t.get("mode") == "lines"]
    assert len(lines) == 2
    slices = figure("slice")
    titles = {v["title"]["text"] for k, v in slices["layout"].items() if k.startswith("xaxis") and "title" in v}
    assert {"rank", "trial_state", "lr_prompt", "prompt_length"} <= titles, titles
    assert all(len(t["x"]) == 2 for t in slices["data"] if t.get("mode") == "markers" and "x" in t)
    log_axes = {
        v["title"]["text"] for k, v in slices["layout"].items() if k.startswith("xaxis") and v.get("type") == "log"
    }
    assert {"lr_prompt", "lr_lowrank", "lr_head"} <= log_axes
    html = Path(
        mlflow.artifacts.download_artifacts(
            run_id=outcome.tracking.parent_run_id, artifact_path="plots/optuna_plots.html", tracking_uri=server
        )
    )
    assert "2 trials reported: 1 completed, 1 stopped early" in html.read_text()
    assert "Parameter importances need at least 10 completed trials; this study has 1." in html.read_text()


def test_a_registered_version_loads_from_code_in_a_fresh_process_without_pickles(server, swept, tmp_path):
    _, outcome = swept
    promotion = outcome.tracking.promotion
    client = MlflowClient(server)
    version = client.get_model_version(promotion.model, promotion.version)
    logged = client.get_logged_model(version.tags["deptune.logged_model"])
    assert version.model_id in (None, logged.model_id)  # (the server's REST answer may leave model_id out)
    assert logged.name == f"{promotion.model}-trial-{outcome.study.best_trial.number:03d}"
    assert logged.name in version.description and version.tags["deptune.logged_model"] == logged.model_id
    links = json.loads(logged.tags["mlflow.modelVersions"])
    assert [(v["name"], str(v["version"])) for v in links] == [(promotion.model, promotion.version)]
    texts = ["the movie was good great", "awful bad day", "a cold dull song"]
    script = f"""
import json, sys, mlflow, mlflow.pyfunc, pandas as pd
from pathlib import Path
mlflow.set_tracking_uri({server!r})
local = Path(mlflow.artifacts.download_artifacts({promotion.uri!r}, dst_path={str(tmp_path / "m")!r}))
files = [p.relative_to(local).as_posix() for p in local.rglob('*') if p.is_file()]
model = mlflow.pyfunc.load_model({promotion.uri!r})
out = model.predict(pd.DataFrame({{'sentence': {texts!r}}}))
print(json.dumps({{'files': files, 'labels': list(out['label']), 'mlmodel': (local / 'MLmodel').read_text()}}))
"""
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    found = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert not [f for f in found["files"] if f.endswith((".pkl", ".pickle"))]
    assert "python_model.pkl" not in found["files"]
    assert "model_code_path" in found["mlmodel"] and "python_model.pkl" not in found["mlmodel"]
    assert any(f.endswith("adapter/adapter_model.safetensors") for f in found["files"])
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "deptune.cli",
            "predict",
            promotion.uri,
            "--uri",
            server,
            *(arg for t in texts for arg in ("--text", t)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert [line.split("\t")[1] for line in cli.stdout.strip().splitlines()] == found["labels"]
    assert [line.split("\t")[2] for line in cli.stdout.strip().splitlines()] == texts


def test_the_champion_is_served_by_mlflow_models_serve_and_carries_its_code(server, swept):
    """`mlflow models serve` as the README runs it (the venv's bin on PATH: the server starts uvicorn by
    name): the scoring server on 127.0.0.1 answers /invocations with labels and class names. The model holds
    deptune's code and its runtime requirements, not a pin of a deptune no index has."""
    _, outcome = swept
    name = outcome.tracking.promotion.model
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", tracking_uri=server))
    assert (local / "code" / "deptune" / "registry" / "pyfunc.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "deptune" not in requirements and "torch" in requirements and "transformers" in requirements
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": server}
    serving = subprocess.Popen(
        [f"{bin_dir}/mlflow", "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                assert serving.poll() is None, "mlflow models serve exited"
                time.sleep(0.5)
        texts = ["the movie was good great", "awful bad day"]
        answer = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["sentence"], "data": [[t] for t in texts]}},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        assert len(rows) == 2 and all(r["label"] in ("0", "1") for r in rows)
        assert [r["label_name"] for r in rows] == [{"0": "negative", "1": "positive"}[r["label"]] for r in rows]
    finally:
        os.killpg(serving.pid, 15)
        serving.wait(timeout=30)


def test_an_outage_across_the_end_of_a_sweep_defers_registration_to_sync(tmp_path):
    """MLflow goes away once the parent run is open and is still away when the trials end: nothing is lost
    and nothing is skipped silently. The sweep says that registration and the leaderboard wait; once the
    server is back, `deptune sync` sends every journal, registers the champion and writes a whole
    leaderboard (every trial's run id and adapter URI)."""
    from deptune.sweep.tracker import journal_dir_for

    server = Server(tmp_path / "server")
    server.start()
    spec = sweep_spec(tmp_path / "run", server.uri, "outage", [GOOD, {**GOOD, "prompt_length": 6}])
    outcome, errors = {}, []

    def sweep() -> None:
        try:
            outcome["value"] = run_sweep(spec)
        except BaseException as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
    try:
        thread = threading.Thread(target=sweep)
        thread.start()
        parent_sent = lambda: list((tmp_path / "run" / "mlflow-journal").glob("*/parent/sent.json"))  # noqa: E731
        deadline = time.monotonic() + 120
        while not parent_sent() and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
        server.stop()  # the parent run exists; everything after it is journaled
        thread.join(timeout=300)
    finally:
        ray.shutdown()
    assert not errors, errors
    tracking = outcome["value"].tracking
    assert tracking.promotion is None and tracking.not_logged
    assert "deptune sync" in tracking.unfinished and "not registered" in tracking.unfinished
    server.start()
    try:
        folder = journal_dir_for(spec, outcome["value"].execution)
        synced = CliRunner().invoke(app, ["sync", str(folder), "--uri", server.uri])
        assert synced.exit_code == 0, synced.output
        assert "registered models:/outage-model/1" in synced.output, synced.output
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("outage")
        (parent,) = client.search_runs([experiment.experiment_id], "tags.`deptune.role` = 'sweep'")
        assert parent.info.status == "FINISHED" and parent.data.tags["deptune.best_run_id"]
        board = pd.read_csv(client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path / "dl")))
        assert len(board) == 2 and board["run_id"].notna().all() and board["adapter_uri"].notna().all()
        assert client.get_model_version_by_alias("outage-model", "champion").version == "1"
        trials = client.search_runs([experiment.experiment_id], "tags.`deptune.role` = 'trial'")
        assert len(trials) == 2
        for run in trials:  # every evaluation once, in order
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "objective_per_eval")]
            assert steps and steps == sorted(set(steps)), steps
    finally:
        server.stop()
