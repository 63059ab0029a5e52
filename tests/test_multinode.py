"""Sweeps on a multi-node Ray (deploy/local/multinode.py): a head without CPUs and worker nodes that share
no disk with the driver, S3 for Ray's storage, an MLflow server, the study on PostgreSQL when
$DEPTUNE_TEST_POSTGRES_URL is set (sqlite on the head otherwise).

One cluster for the module. Every scenario checks the records in the study and in MLflow: each evaluation
step once, strictly increasing, no hole; a trial that lost its node resumed from a checkpoint rather than
restarted; its CPU-seconds cover every run. The trials' nodes never see the driver's /tmp, so a run that
finishes read nothing from the driver's disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from local_cluster import REPO

sys.path.insert(0, str(REPO / "deploy" / "local"))
from multinode import HEAD_IP, MultiNodeCluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="worker nodes need root for their own mount namespaces"),
]
TINY = {"name": "tiny-bert", "tiny": {"hidden_size": 32, "max_positions": 64, "dropout": 0.0}}
POSITIVE, NEGATIVE = ("good", "great", "fine", "happy", "lovely"), ("bad", "awful", "poor", "sad", "grim")
FILLER = ("the", "movie", "was", "really", "a", "day", "it", "so")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    schemas = _postgres_schemas()
    with schemas as (study_db, mlflow_db):
        mounts = Path("/proc/self/mounts").read_text()
        nodes = MultiNodeCluster(root / "state", workers=2, cpus=2, study_db=study_db, mlflow_db=mlflow_db)
        nodes.up()
        try:
            yield nodes
        finally:
            started = [n.pid for n in [nodes.layout.head, *nodes.layout.workers]] + list(nodes.layout.services.values())
            temp_dir = nodes.layout.temp_dir
            nodes.down()
            left = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
            assert not left, f"processes of the cluster left: {left}"
            assert not any(Path(f"/proc/{pid}").exists() for pid in started), "a process the cluster started is left"
            assert Path("/proc/self/mounts").read_text() == mounts, "a mount was left behind"
            assert not Path(temp_dir).exists()


class _postgres_schemas:
    """(study URL, MLflow URL): two fresh schemas of the test PostgreSQL, dropped afterwards; (None, None)
    without $DEPTUNE_TEST_POSTGRES_URL (sqlite in the cluster's state folder)."""

    def __enter__(self):
        base = os.environ.get("DEPTUNE_TEST_POSTGRES_URL")
        if not base:
            self.names = []
            return None, None
        import sqlalchemy as sa

        prefix = f"deptune_mn_{uuid.uuid4().hex[:8]}"
        self.names = [f"{prefix}_optuna", f"{prefix}_mlflow"]
        self.engine = sa.create_engine(
            base.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )
        with self.engine.connect() as conn:
            for name in self.names:
                conn.execute(sa.text(f"CREATE SCHEMA {name}"))
        sep = "&" if "?" in base else "?"
        return tuple(f"{base}{sep}options=-csearch_path%3D{name}" for name in self.names)

    def __exit__(self, *exc):
        for storage in _STUDY_STORAGES.values():
            storage.engine.dispose()
        _STUDY_STORAGES.clear()
        if self.names:
            import sqlalchemy as sa

            with self.engine.connect() as conn:
                for name in self.names:
                    conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
            self.engine.dispose()


# ----- helpers ---------------------------------------------------------------------------------------------------
def sentiment_csv(path: Path, rows: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    lines = ["sentence,label"]
    for _ in range(rows):
        label = rng.randint(0, 1)
        words = [rng.choice(POSITIVE if label else NEGATIVE) for _ in range(2)] + rng.sample(FILLER, 3)
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def sweep_spec(
    name: str,
    output_dir: Path,
    data: dict,
    runner: str = "tune",
    trials: int = 2,
    steps: int = 240,
    eval_every: int = 20,
    **extra,
) -> dict:
    spec = {
        "backbone": TINY,
        "task": {"name": "sst2", **data},
        "method": {"name": "dept", "budget": 12, "max_length": 32},
        "search": {"prompt_length": {"low": 2, "high": 10, "step": 2}},
        "train": {
            "steps": steps,
            "batch_size": 16,
            "eval_every": eval_every,
            "warmup_steps": 2,
            "lr_head": 0.01,
            "output_dir": str(output_dir),
            "evaluate_test": False,
            "storage_path": f"s3://deptune/{name}",
            "max_failures": 2,
        },
        "resources": {"workers": 1, "cpus_per_worker": 1, "runner": runner},
        "sweep": {
            "trials": trials,
            "max_concurrent": 2,
            "driver_cpus": 0.5,
            "sampler": {"name": "tpe", "startup_trials": 1},
            "scheduler": {"name": "fifo"},
        },
        "study": {"name": name},
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        spec[section] = {**spec[section], field: value} if field else value
    return spec


def driver(cluster: MultiNodeCluster, spec_path: Path, *args: str) -> subprocess.Popen:
    """`deptune sweep` as a driver process on the head node (this machine's namespace: the driver's disk)."""
    env = {**cluster.client_env(), "PYTHONPATH": str(REPO / "platform")}
    env.pop("RAY_ADDRESS")
    return subprocess.Popen(
        [sys.executable, "-m", "deptune.cli", "sweep", str(spec_path), "--address", cluster.gcs_address, *args],
        cwd=spec_path.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


_STUDY_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def study_of(cluster: MultiNodeCluster, name: str) -> optuna.Study:
    """One storage (one connection pool) for all the polling: a storage per call leaves its pooled connections
    to the garbage collector, and PostgreSQL's 100 run out."""
    url = cluster.study_storage
    storage = _STUDY_STORAGES.get(url) or _STUDY_STORAGES.setdefault(url, optuna.storages.RDBStorage(url))
    return optuna.load_study(study_name=name, storage=storage)


def wait_for(condition, timeout_s: float, what: str, process=None):
    """`condition()` once true; `process` (a driver's Popen, or a callable raising if the run ended) must live."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        if callable(process):
            process()
        elif process is not None and process.poll() is not None:
            raise AssertionError(
                f"the driver ended (exit {process.returncode}) before {what}:\n" + process.stdout.read()[-4000:]
            )
        time.sleep(0.3)
    raise TimeoutError(f"no {what} after {timeout_s} s")


def running_with_evaluations(cluster, name: str, count: int):
    """A RUNNING trial that reported at least `count` evaluations, and its current node."""
    try:
        study = study_of(cluster, name)
    except KeyError:  # the driver has not created the study yet
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if len(trial.intermediate_values) >= count and trial.user_attrs.get("nodes"):
            return trial
    return None


def mlflow_runs(cluster, experiment: str, role: str = "trial") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], f"tags.`deptune.role` = '{role}'") if found else []


def assert_records_whole(cluster, name: str, steps: int, eval_every: int = 20) -> list:
    """Every trial COMPLETE; the study and MLflow hold each evaluation once, strictly increasing, no hole."""
    from mlflow import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    expected = list(range(eval_every, steps + 1, eval_every))
    trials = study_of(cluster, name).get_trials()
    assert trials and all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("fail_reason")) for t in trials
    ]
    runs = {int(r.data.tags["deptune.optuna_trial"]): r for r in mlflow_runs(cluster, name)}
    assert sorted(runs) == [t.number for t in trials], sorted(runs)
    for trial in trials:
        assert sorted(trial.intermediate_values) == expected, (trial.number, sorted(trial.intermediate_values))
        history = client.get_metric_history(runs[trial.number].info.run_id, "objective_per_eval")
        assert [m.step for m in history] == expected, (trial.number, [m.step for m in history])
        assert runs[trial.number].info.status == "FINISHED"
    return trials


def worker_ips(cluster) -> set[str]:
    return {w.ip for w in cluster.layout.workers}


# ----- runner: tune ------------------------------------------------------------------------------------------------
def test_tune_trials_survive_a_lost_node_and_a_killed_driver(cluster, tmp_path):
    """The driver's data files reach the trials (shipped: no worker sees the driver's /tmp); trials run on the
    worker nodes, never the head. A node killed mid-trial (raylet and all) is declared dead, and its trial
    resumes from its last checkpoint on S3 on another node. Then the driver is SIGKILLed, and `--resume`
    from a new driver process continues every unfinished trial from its checkpoint. The records stay whole."""
    files = {
        split: str(sentiment_csv(tmp_path / "data" / f"{split}.csv", rows, seed))
        for split, rows, seed in (("train", 300, 1), ("validation", 60, 2))
    }
    spec = sweep_spec("mn-tune", tmp_path / "out", {"files": files, "validation_split": "whole"})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = driver(cluster, path)
    victim = wait_for(lambda: running_with_evaluations(cluster, "mn-tune", 2), 240, "trial with 2 evaluations", run)
    lost_ip = victim.user_attrs["nodes"][-1]
    node_lost_at = time.time()
    cluster.kill_node(next(w.name for w in cluster.layout.workers if w.ip == lost_ip))
    cluster.wait_dead(lost_ip, 30)
    cluster.add_node()  # the replacement a Kubernetes or autoscaled cluster brings; the trial need not wait

    def moved():
        trial = study_of(cluster, "mn-tune").trials[victim.number]
        return (
            trial
            if len(trial.user_attrs.get("resumed_from", [])) > 1
            and len(trial.intermediate_values) > len(victim.intermediate_values) + 1
            else None
        )

    wait_for(moved, 240, "the moved trial's progress", run)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    unfinished = [t.number for t in study_of(cluster, "mn-tune").trials if t.state == TrialState.RUNNING]
    # the dead driver's trials may log an evaluation more before Ray reaps them: their runs end there
    wait_for(lambda: not any(a["state"] == "ALIVE" for a in cluster.actors("ImplicitFunc")), 60, "trials reaped")
    reaped_at = time.time()
    resumed = driver(cluster, path, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-4000:]

    trials = assert_records_whole(cluster, "mn-tune", 240)
    for trial in trials:
        assert set(trial.user_attrs["nodes"]) <= worker_ips(cluster), trial.user_attrs["nodes"]  # never the head
        assert HEAD_IP not in trial.user_attrs["nodes"]
    moved_trial = trials[victim.number]
    assert moved_trial.user_attrs["nodes"][0] == lost_ip and lost_ip not in moved_trial.user_attrs["nodes"][1:]
    for trial in trials:  # every restart resumed from a checkpoint's step, none from step 0
        runs = 1 + (trial.number == victim.number) + (trial.number in unfinished)
        first, *restarts = trial.user_attrs["resumed_from"]
        assert first == 0 and len(restarts) == runs - 1, (trial.number, trial.user_attrs["resumed_from"], runs)
        assert all(step % 20 == 0 and 20 <= step < 240 for step in restarts), restarts

    # the moved trial's CPU-seconds cover all its runs: the spans of its evaluations in each (before the node
    # was lost; until the dead driver's trials were reaped; after)
    from mlflow import MlflowClient

    run_id = next(
        r.info.run_id
        for r in mlflow_runs(cluster, "mn-tune")
        if r.data.tags["deptune.optuna_trial"] == str(victim.number)
    )
    stamps = sorted(
        m.timestamp / 1000 for m in MlflowClient(cluster.mlflow_uri).get_metric_history(run_id, "objective_per_eval")
    )
    cuts = [node_lost_at, reaped_at]
    spans = [[t for t in stamps if lo <= t < hi] for lo, hi in zip([0, *cuts], [*cuts, float("inf")])]
    covered = sum(span[-1] - span[0] for span in spans if span)
    assert moved_trial.user_attrs["wall_seconds"] >= covered, (moved_trial.user_attrs, covered)
    assert "best adapter: s3://deptune/mn-tune/" in out, out[-2000:]


def test_a_backbone_folder_only_the_driver_has_is_refused_before_any_trial(cluster, tmp_path):
    """A local backbone folder on the driver's disk cannot travel (gigabytes): refused with its key path and
    what a cluster needs, exit 2, before any trial or execution is recorded."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "hidden_size": 32,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "intermediate_size": 64,
                "max_position_embeddings": 64,
                "vocab_size": 100,
            }
        )
    )
    for name in ("model.safetensors", "tokenizer.json"):
        (model / name).write_bytes(b"")
    spec = sweep_spec(
        "mn-refused", tmp_path / "out", {"name": "synthetic", "synthetic_size": 100}, backbone={"name": str(model)}
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = driver(cluster, path)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 2, out[-3000:]
    assert (
        f"backbone.name: {model} is on the driver's disk (2 of the cluster's 2 other node(s) do not see it)" in out
    ), out[-3000:]
    assert "Traceback" not in out
    assert not study_of(cluster, "mn-refused").user_attrs.get("executions")  # nothing started
    assert not mlflow_runs(cluster, "mn-refused", role="sweep")

    local = sweep_spec("mn-local-storage", tmp_path / "out2", {"name": "synthetic", "synthetic_size": 100})
    local["train"].pop("storage_path")  # <output_dir>/ray: the driver's disk
    path.write_text(yaml.safe_dump(local))
    run = driver(cluster, path)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 2 and "train.output_dir: Ray's storage" in out and "s3://bucket/path" in out, out[-3000:]


# ----- runner: train ----------------------------------------------------------------------------------------------
def alive_workers(cluster) -> list[dict]:
    return [a for a in cluster.actors("RayTrainWorker") if a["state"] == "ALIVE"]


def test_a_ray_train_trial_spans_two_nodes_and_survives_losing_one(cluster, tmp_path):
    """runner: train with 2 workers of 1.5 CPUs on 2-CPU nodes: DDP over gloo across two nodes. One node is
    killed mid-run (a replacement joins): Ray Train restarts the worker group from the run's checkpoint on
    S3, again across two nodes, and the trial's records stay whole."""
    files = {
        split: str(sentiment_csv(tmp_path / "data" / f"{split}.csv", rows, seed))
        for split, rows, seed in (("train", 300, 3), ("validation", 60, 4))
    }
    spec = sweep_spec(
        "mn-train",
        tmp_path / "out",
        {"files": files, "validation_split": "whole"},
        runner="train",
        trials=1,
        steps=160,
        resources={"workers": 2, "cpus_per_worker": 1.5, "runner": "train"},
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = driver(cluster, path)
    wait_for(lambda: running_with_evaluations(cluster, "mn-train", 2), 240, "trial with 2 evaluations", run)
    first = alive_workers(cluster)
    assert len(first) == 2
    ranks_on = {cluster.node_ip(a["node_id"]) for a in first}
    assert len(ranks_on) == 2 and ranks_on <= worker_ips(cluster), ranks_on  # DDP across two nodes
    trial_driver = next(cluster.node_ip(a["node_id"]) for a in cluster.actors("ImplicitFunc") if a["state"] == "ALIVE")
    lost_ip = next(ip for ip in ranks_on if ip != trial_driver)  # the node of a rank, not of the trial's driver
    cluster.kill_node(next(w.name for w in cluster.layout.workers if w.ip == lost_ip))
    cluster.wait_dead(lost_ip, 30)
    cluster.add_node()
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out[-4000:]

    (trial,) = assert_records_whole(cluster, "mn-train", 160)
    assert HEAD_IP not in trial.user_attrs["nodes"]
    start, *restarts = trial.user_attrs["resumed_from"]  # the worker group's restart, from a checkpoint
    assert start == 0 and len(restarts) == 1 and restarts[0] % 20 == 0 and 20 <= restarts[0] < 160, restarts
    second = [a for a in cluster.actors("RayTrainWorker") if a["actor_id"] not in {f["actor_id"] for f in first}]
    assert len(second) == 2 and len({cluster.node_ip(a["node_id"]) for a in second}) == 2
    assert lost_ip not in {cluster.node_ip(a["node_id"]) for a in second}


# ----- a submitted sweep: the job's working directory, outages, ray job stop, --resume ------------------------------
def source_adapter(tmp_path: Path, prompt_length: int) -> Path:
    """A DePT adapter trained for a few steps in this process: a local source adapter on the driver's disk."""
    from deptune.specs import parse_spec
    from deptune.train.loop import train
    from deptune.train.spec import RunSpec

    run = parse_spec(
        {
            "backbone": TINY,
            "task": {"name": "synthetic", "synthetic_size": 100},
            "method": {"name": "dept", "prompt_length": prompt_length, "budget": 12, "max_length": 32},
            "train": {
                "steps": 4,
                "batch_size": 8,
                "eval_every": 2,
                "warmup_steps": 1,
                "output_dir": str(tmp_path / "source"),
                "evaluate_test": False,
            },
        },
        kind=RunSpec,
    )
    return train(run, reporter=lambda metrics, best: None).adapter_dir


def submit(cluster, job_id: str, job_dir: Path, *args: str, wait: bool = False) -> subprocess.CompletedProcess:
    runtime_env = {
        "env_vars": {
            "PYTHONPATH": str(REPO / "platform"),
            "DEPTUNE_GIT_COMMIT": "0123abc",
            "RAY_JOB_STOP_WAIT_TIME_S": "120",
            "DEPTUNE_STUDY_STORAGE": cluster.study_storage,
        }
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "job",
            "submit",
            "--submission-id",
            job_id,
            "--working-dir",
            str(job_dir),
            "--runtime-env-json",
            json.dumps(runtime_env),
            *([] if wait else ["--no-wait"]),
            "--",
            "deptune",
            "sweep",
            "sweep.yaml",
            *args,
        ],
        env=cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def job(cluster, job_id: str, what: str = "") -> dict:
    return cluster._get(f"{cluster.dashboard}/api/jobs/{job_id}{what}")


def job_alive(cluster, job_id: str):
    deadline = [time.monotonic() + 100]

    def check() -> None:
        info = job(cluster, job_id)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline[0]:
            raise AssertionError(f"job {job_id} {info['status']}:\n" + job(cluster, job_id, "/logs")["logs"][-6000:])

    return check


def wait_job(cluster, job_id: str, timeout_s: float = 400) -> dict:
    return wait_for(
        lambda: (info := job(cluster, job_id))["status"] in ("SUCCEEDED", "FAILED", "STOPPED") and info,
        timeout_s,
        f"end of job {job_id}",
    )


OUTAGE_S = 25
"""Each outage, an order of magnitude past what the clients retry by default (pyarrow's S3 ~2 s, MLflow's one
retry as deptune sets it): only deptune's own waiting can carry a trial or a write across it."""


def test_a_submitted_sweep_waits_out_outages_is_stopped_and_resumed(cluster, tmp_path):
    """`ray job submit --working-dir` with the spec's data given relative to the working directory (each node
    resolves it in its own copy) and a source adapter on the driver's disk (shipped). While the trials run,
    S3 is away for OUTAGE_S and the MLflow server for OUTAGE_S (overlapping): the trials wait and the driver
    keeps the writes, and the job says so. `ray job stop` stops the sweep while MLflow is still away; a second
    submission with --resume finishes it: records whole, the best adapter registered."""
    job_dir = tmp_path / "job"
    for split, rows, seed in (("train", 300, 5), ("validation", 60, 6)):
        sentiment_csv(job_dir / "data" / f"{split}.csv", rows, seed)
    adapter = source_adapter(tmp_path, prompt_length=4)
    spec = sweep_spec(
        "mn-job",
        tmp_path / "out",
        {"files": {"train": "data/train.csv", "validation": "data/validation.csv"}, "validation_split": "whole"},
        steps=800,  # still running when stopped: ~100 steps at the stop, ~300 more while it stops
        eval_every=50,
        method={"name": "dept", "budget": 12, "max_length": 32, "prompt_length": 4, "init_from": str(adapter)},
        search={
            "prompt_length": {"low": 4, "high": 4},
            "lr_prompt": {"low": 0.1, "high": 0.4},
            "lr_lowrank": {"low": 1e-4, "high": 1e-3},
        },
    )
    (job_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert submit(cluster, "mn-job-1", job_dir).returncode == 0
    wait_for(
        lambda: running_with_evaluations(cluster, "mn-job", 1), 240, "an evaluation", job_alive(cluster, "mn-job-1")
    )
    started = time.time()
    tracking = cluster.tracking_outage()  # S3 away for OUTAGE_S, MLflow for OUTAGE_S from 10 s in
    with cluster.storage_outage():
        time.sleep(10)
        tracking.__enter__()
        evaluations = sum(len(t.intermediate_values) for t in study_of(cluster, "mn-job").get_trials())
        time.sleep(OUTAGE_S - 10)
    storage_s = time.time() - started
    wait_for(
        lambda: sum(len(t.intermediate_values) for t in study_of(cluster, "mn-job").get_trials()) > evaluations,
        60,
        "progress once S3 is back",
        job_alive(cluster, "mn-job-1"),
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "stop", "mn-job-1"],
        env=cluster.client_env(),
        capture_output=True,
        timeout=200,
        check=True,
    )  # stopped while MLflow is still away
    first = wait_job(cluster, "mn-job-1")
    time.sleep(max(0.0, 10 + OUTAGE_S - (time.time() - started)))
    tracking.__exit__(None, None, None)
    tracking_s = time.time() - started - 10
    logs = job(cluster, "mn-job-1", "/logs")["logs"]
    assert first["status"] == "STOPPED", (first, logs[-3000:])
    assert "storage s3://deptune/mn-job" in logs and "unreachable" in logs and "reachable again" in logs, logs[-4000:]
    assert "MLflow at" in logs and "unreachable" in logs and "deptune sync" in logs, logs[-4000:]
    assert any(t.state == TrialState.RUNNING for t in study_of(cluster, "mn-job").get_trials())

    assert submit(cluster, "mn-job-2", job_dir, "--resume").returncode == 0
    second = wait_job(cluster, "mn-job-2")
    logs = job(cluster, "mn-job-2", "/logs")["logs"]
    assert second["status"] == "SUCCEEDED", logs[-4000:]
    trials = assert_records_whole(cluster, "mn-job", 800, eval_every=50)
    assert all(set(t.user_attrs["nodes"]) <= worker_ips(cluster) for t in trials)
    assert "registered models:/deptune-sst2-dept/" in logs, logs[-3000:]
    (parent,) = mlflow_runs(cluster, "mn-job", role="sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["deptune.git_commit"] == "0123abc"

    from mlflow import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    for run in mlflow_runs(cluster, "mn-job"):  # the source adapter travelled: each trial read its node's copy
        spec_file = client.download_artifacts(run.info.run_id, "spec/run_spec.json", str(tmp_path / run.info.run_id))
        init_from = json.loads(Path(spec_file).read_text())["method"]["init_from"]
        assert "/deptune-shipped/" in init_from and not init_from.startswith(str(tmp_path)), init_from
    assert tracking_s >= OUTAGE_S and storage_s >= OUTAGE_S
