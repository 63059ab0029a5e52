"""Cluster operation, for real.

PostgreSQL part (needs $DEPTUNE_TEST_POSTGRES_URL): the cluster's shared state on one PostgreSQL database,
the Optuna study and MLflow's backend store each in their own schema; scheduled executions of one spec
continue the study, each registers its best adapter and `champion` moves only on improvement; the study
lock in the database keeps a second execution from starting and dies with its holder's connection.

End-to-end part (slow), on one deploy/local for the module (Ray head with token auth + MLflow server with
basic auth on 127.0.0.1): the scripts' loopback listeners, secrets and refusals, stop.sh leaving nothing;
sweeps submitted with `ray job submit`, a concurrent submission refused by the lock.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from local_cluster import REPO, group_pids, listeners, local_cluster, loopback
from studies import study_trials

TINY = {"name": "tiny-bert", "tiny": {"hidden_size": 32, "max_positions": 64, "dropout": 0.0}}
MODEL = "deptune-synthetic-dept"


def tiny_spec(
    output_dir: Path, study: str, trials: int, max_concurrent: int, tracking_uri: str | None, steps: int = 12
) -> dict:
    spec = {
        "backbone": TINY,
        "task": {"name": "synthetic", "synthetic_size": 300},
        "method": {"name": "dept", "budget": 12, "max_length": 32},
        "search": {"prompt_length": {"low": 2, "high": 10, "step": 2}},
        "train": {
            "steps": steps,
            "batch_size": 16,
            "eval_every": max(steps // 3, 1),
            "warmup_steps": 2,
            "lr_head": 0.01,
            "output_dir": str(output_dir),
            "evaluate_test": False,
        },
        "resources": {"workers": 1, "cpus_per_worker": 0.75},
        "sweep": {
            "trials": trials,
            "max_concurrent": max_concurrent,
            "driver_cpus": 0.25,
            "sampler": {"name": "tpe", "startup_trials": 2},
            "scheduler": {"name": "fifo"},
        },
        "study": {"name": study},
    }
    if tracking_uri:
        spec["tracking"] = {"uri": tracking_uri}
    return spec


# --- PostgreSQL: the study and MLflow's store on one database, separate schemas ------------------------------


def _pg_base() -> str:
    base = os.environ.get("DEPTUNE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("DEPTUNE_TEST_POSTGRES_URL is not set (CI sets it to the PostgreSQL server on 127.0.0.1:5432)")
    return base


def _engine(url: str):
    import sqlalchemy as sa

    return sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )


@pytest.fixture
def pg_schemas():
    """(optuna URL, MLflow URL): two fresh schemas of the test database, dropped afterwards."""
    import sqlalchemy as sa

    base = _pg_base()
    prefix = f"deptune_t_{uuid.uuid4().hex[:8]}"
    names = {"optuna": f"{prefix}_optuna", "mlflow": f"{prefix}_mlflow"}
    admin = _engine(base)
    with admin.connect() as conn:
        for schema in names.values():
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    sep = "&" if "?" in base else "?"
    urls = {k: f"{base}{sep}options=-csearch_path%3D{v}" for k, v in names.items()}
    try:
        yield urls["optuna"], urls["mlflow"].replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text("SET lock_timeout = '30s'"))
            for schema in names.values():
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


@pytest.mark.slow
def test_scheduled_executions_share_a_postgresql_study_and_registry(pg_schemas, tmp_path, monkeypatch):
    import ray
    from mlflow import MlflowClient

    from deptune import locks
    from deptune.specs import parse_spec
    from deptune.sweep.config import SweepSpec
    from deptune.sweep.driver import SweepLocked, run_sweep
    from deptune.sweep.study import STORAGE_ENV, executions

    optuna_url, mlflow_url = pg_schemas
    monkeypatch.setenv(STORAGE_ENV, optuna_url)  # as the cluster's pods get it
    monkeypatch.chdir(tmp_path)  # MLflow's SQL store puts artifacts under ./mlruns of the creating process
    spec = parse_spec(
        tiny_spec(tmp_path / "run", "cron", trials=1, max_concurrent=1, tracking_uri=mlflow_url), kind=SweepSpec
    )
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
    try:
        first = run_sweep(spec)
        second = run_sweep(spec)  # the next scheduled run: same spec, same study
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name="cron", storage=optuna_url)
    trials = study.get_trials()
    assert (first.execution.number, second.execution.number) == (1, 2)
    assert [e.number for e in executions(study)] == [1, 2]
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    by_execution = {n: [t for t in trials if t.user_attrs["execution"] == n] for n in (1, 2)}
    assert [len(v) for v in by_execution.values()] == [1, 1]
    assert by_execution[2][0].user_attrs["seen_trials"] == 1  # warm start: the sampler saw execution 1's trial

    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name("cron")
    parents = client.search_runs([experiment.experiment_id], "tags.`deptune.role` = 'sweep'")
    assert sorted(r.data.tags["deptune.execution"] for r in parents) == ["1", "2"]
    assert all(r.info.status == "FINISHED" for r in parents)
    children = client.search_runs([experiment.experiment_id], "tags.`deptune.role` = 'trial'")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {r.info.run_id for r in parents}
    versions = sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    values = [float(v.tags["deptune.metric_value"]) for v in versions]
    for version, outcome in zip(versions, (first, second)):
        assert version.tags["deptune.execution"] == str(outcome.execution.number)
        assert str(outcome.tracking.promotion.version) == str(version.version)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == ("2" if values[1] > values[0] else "1"), (values, champion.version)
    assert second.tracking.promotion.champion == (values[1] > values[0])

    # The lock: while another holder has it in the database, an execution refuses to start, at once.
    with locks.exclusive("sweep:cron", optuna_url):
        started = time.monotonic()
        with pytest.raises(SweepLocked, match="another execution of study 'cron' is running"):
            run_sweep(spec)
        refused_in = time.monotonic() - started
    assert refused_in < 60, refused_in
    study = optuna.load_study(study_name="cron", storage=optuna_url)
    assert len(study.get_trials()) == 2 and len(executions(study)) == 2  # no trial, no execution recorded
    assert len(client.search_runs([experiment.experiment_id], "tags.`deptune.role` = 'sweep'")) == 2


def test_the_study_lock_dies_with_its_holders_connection(pg_schemas):
    from deptune import locks

    optuna_url, _ = pg_schemas
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from deptune import locks
            with locks.exclusive("sweep:held", {optuna_url!r}):
                print("locked", flush=True)
                time.sleep(600)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "platform")},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(locks.LockHeld):
            with locks.exclusive("sweep:held", optuna_url):
                pass
        with locks.exclusive("sweep:other", optuna_url):  # other keys are independent
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no unlock, no clean disconnect: the server notices the dead socket
        holder.wait()
    with locks.exclusive("sweep:held", optuna_url, wait_s=10):
        pass


# --- end to end: deploy/local, sweeps submitted as Ray jobs ---------------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """deploy/local (a Ray head with token auth and an MLflow server with basic auth, on 127.0.0.1), started
    once for the module's tests; on exit stop.sh must leave no process, port, pid file or Ray temp folder."""
    with local_cluster(tmp_path_factory.mktemp("local"), num_cpus=2) as cluster:
        yield cluster


@pytest.mark.slow
def test_local_scripts_start_a_token_protected_loopback_cluster(deployed, tmp_path):
    state, ports, client_env = deployed.state, deployed.ports, deployed.client_env
    assert (state / "auth_token").stat().st_mode & 0o077 == 0, "the token is readable by its owner only"

    # Every listener of both servers is on loopback, and the configured ports are among them.
    pids = [pid for g in deployed.groups for pid in group_pids(g)]
    found = listeners(pids)
    assert found and all(loopback(addr) for addr, _ in found), found
    assert {ports[0], ports[1], ports[2], ports[4]} <= {port for _, port in found}, (ports, found)
    commands = [
        c.read_bytes().replace(b"\0", b" ").decode() for c in (Path(f"/proc/{p}/cmdline") for p in pids) if c.exists()
    ]
    assert any(" server " in c and "mlflow" in c for c in commands), commands  # the MLflow server is there, and
    assert not [c for c in commands if "huey" in c], commands  # without MLflow's job runner (deptune runs no jobs)

    # env.sh gives the job CLI the address and the token, and MLflow clients the basic-auth user.
    for secret in ("mlflow_credentials", "mlflow_auth.ini", "mlflow_secret_key"):
        assert (state / secret).stat().st_mode & 0o077 == 0, f"{secret} is readable by its owner only"
    assert state.stat().st_mode & 0o077 == 0, "the state folder is its owner's only"
    user, password = client_env["MLFLOW_TRACKING_USERNAME"], client_env["MLFLOW_TRACKING_PASSWORD"]
    assert user == "deptune" and len(password) >= 24
    assert password not in deployed.start_output, "start.sh never prints the password"

    # MLflow answers its user, and refuses an unauthenticated or wrongly authenticated write.
    mlflow_api = f"{deployed.mlflow}/api/2.0/mlflow"
    assert _mlflow_request(f"{mlflow_api}/experiments/search?max_results=5", None, (user, password))[0] == 200
    create = {"name": "not-allowed"}
    assert _mlflow_request(f"{mlflow_api}/experiments/create", create, None)[0] == 401
    assert _mlflow_request(f"{mlflow_api}/experiments/create", create, (user, "wrong-password"))[0] == 401
    assert (
        _mlflow_request(f"{mlflow_api}/experiments/get-by-name?experiment_name=not-allowed", None, (user, password))[0]
        == 404
    ), "the refused write created nothing"
    status, body = _mlflow_request(f"{mlflow_api}/experiments/create", {"name": "allowed"}, (user, password))
    assert status == 200 and json.loads(body)["experiment_id"]
    assert client_env["RAY_ADDRESS"] == f"http://127.0.0.1:{ports[1]}"
    assert client_env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports[4]}"
    assert client_env["RAY_AUTH_MODE"] == "token"
    assert client_env["RAY_AUTH_TOKEN"] == (state / "auth_token").read_text().strip()

    # HOME points to an empty folder: no ~/.ray/auth_token of this user can stand in for the token.
    home = tmp_path / "home"
    home.mkdir()
    ray_cli = str(Path(sys.executable).parent / "ray")
    submit = [ray_cli, "job", "submit", "--", "python", "-c", "print('deptune-' + 'ok')"]
    # The authorised job's driver also joins the cluster and runs a task: the head passes the token on
    # to its processes, and `python` there is this venv's (start.sh puts DEPTUNE_PYTHON's bin first).
    driver = "import ray; ray.init(address='auto'); print('deptune-' + ray.get(ray.remote(lambda: 'ok').remote()))"
    submit_driver = [ray_cli, "job", "submit", "--", "python", "-c", driver]
    no_token = {k: v for k, v in client_env.items() if not k.startswith("RAY_AUTH_")} | {"HOME": str(home)}
    wrong_token = client_env | {"HOME": str(home), "RAY_AUTH_TOKEN": "0" * 64, "RAY_AUTH_TOKEN_PATH": "/nonexistent"}
    with_token = client_env | {"HOME": str(home)}
    procs = {
        name: subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, cmd, e in (
            ("none", submit, no_token),
            ("wrong", submit, wrong_token),
            ("token", submit_driver, with_token),
        )
    }
    outs = {name: (p.communicate(timeout=180)[0], p.returncode) for name, p in procs.items()}
    out, rc = outs["token"]
    assert rc == 0 and "deptune-ok" in out and "succeeded" in out, out
    out, rc = outs["none"]
    assert rc != 0 and "Unauthorized: Missing authentication token" in out, out
    out, rc = outs["wrong"]
    assert rc != 0 and "Forbidden: Invalid authentication token" in out, out
    assert not any(home.iterdir()), "the CLI wrote nothing into HOME (no token generated)"
    print(f"start.sh took {deployed.startup_s:.1f} s")


def _mlflow_request(url: str, body: dict | None, auth: tuple[str, str] | None) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET (or a POST of `body`) to MLflow, with basic auth when given."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _wait_job(cluster, job_id: str, timeout_s: float = 400) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = cluster.jobs_api(job_id)
        if info["status"] in TERMINAL:
            return info
        time.sleep(1.0)
    raise TimeoutError(
        f"job {job_id} still {info['status']} after {timeout_s} s:\n"
        + cluster.jobs_api(f"{job_id}/logs")["logs"][-3000:]
    )


@pytest.mark.slow
def test_sweeps_submitted_as_ray_jobs_continue_one_study_under_its_lock(deployed, tmp_path):
    job_dir = tmp_path / "job"  # the job's --working-dir: only the spec
    job_dir.mkdir()
    (job_dir / "nightly.yaml").write_text(
        yaml.safe_dump(
            # trials long enough (~14 s each, in a reused actor) that B and `ray job stop` arrive while they run
            tiny_spec(tmp_path / "run", "nightly", trials=2, max_concurrent=1, tracking_uri=None, steps=200)
        )
    )
    study_url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    cluster = deployed
    runtime_env = {
        "env_vars": {
            "DEPTUNE_STUDY_STORAGE": study_url,
            "MLFLOW_TRACKING_URI": cluster.mlflow,
            "DEPTUNE_GIT_COMMIT": "0123abc",  # the working dir has no .git
            "PYTHONPATH": str(REPO / "platform"),  # this checkout's deptune, whatever the venv has installed
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    }
    ray_cli = str(Path(sys.executable).parent / "ray")

    def submit(job_id: str, *args: str, wait: bool = True, env_vars: dict | None = None):
        env = {"env_vars": {**runtime_env["env_vars"], **(env_vars or {})}}
        return subprocess.run(
            [
                ray_cli,
                "job",
                "submit",
                "--submission-id",
                job_id,
                "--working-dir",
                str(job_dir),
                "--runtime-env-json",
                json.dumps(env),
                *([] if wait else ["--no-wait"]),
                "--",
                sys.executable,
                "-m",
                "deptune.cli",
                "sweep",
                "nightly.yaml",
                *args,
            ],
            env=cluster.client_env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def logs(job_id: str) -> str:
        return cluster.jobs_api(f"{job_id}/logs")["logs"]

    # Execution 1 (job A) runs; a second submission of the same sweep meanwhile (job B) is refused.
    a = submit("sweep-a", wait=False)
    assert a.returncode == 0, a.stdout + a.stderr
    deadline = time.monotonic() + 300
    while not any(t.state == TrialState.RUNNING for t in study_trials(study_url, "nightly")):
        info = cluster.jobs_api("sweep-a")
        assert info["status"] not in TERMINAL, logs("sweep-a")[-3000:]
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(1.0)
    b = submit("sweep-b")
    b_info = cluster.jobs_api("sweep-b")
    assert b.returncode != 0 and b_info["status"] == "FAILED", (b_info, b.stdout[-2000:])
    assert "exit code 3" in b_info["message"], b_info
    assert "another execution of study 'nightly' is running" in logs("sweep-b")
    assert cluster.jobs_api("sweep-a")["status"] == "RUNNING"  # B was refused while A ran, not after

    a_info = _wait_job(cluster, "sweep-a")
    a_logs = logs("sweep-a")
    assert a_info["status"] == "SUCCEEDED", a_logs[-3000:]
    assert "study nightly: 2 complete" in a_logs and "registered models:/" + MODEL + "/1" in a_logs, a_logs[-3000:]
    trials = study_trials(study_url, "nightly")
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["execution"] for t in trials} == {1}  # B recorded nothing

    experiment = cluster.mlflow_api("experiments/get-by-name?experiment_name=nightly")["experiment"]

    def runs(role: str) -> list[dict]:
        found = cluster.mlflow_api(
            "runs/search",
            {
                "experiment_ids": [experiment["experiment_id"]],
                "filter": f"tags.`deptune.role` = '{role}'",
                "max_results": 100,
            },
        ).get("runs", [])
        return found

    def tags(entity: dict) -> dict:
        return {t["key"]: t["value"] for t in entity.get("tags", entity.get("data", {}).get("tags", []))}

    parents, children = runs("sweep"), runs("trial")
    assert len(parents) == 1 and len(children) == 2
    assert parents[0]["info"]["status"] == "FINISHED" and all(c["info"]["status"] == "FINISHED" for c in children)
    assert tags(parents[0]["data"])["deptune.git_commit"] == "0123abc"
    assert {tags(c["data"])["mlflow.parentRunId"] for c in children} == {parents[0]["info"]["run_id"]}

    def versions() -> list[dict]:
        found = cluster.mlflow_api(f"model-versions/search?filter=name%3D%27{MODEL}%27")["model_versions"]
        return sorted(found, key=lambda v: int(v["version"]))

    def champion() -> str:
        model = cluster.mlflow_api(f"registered-models/get?name={MODEL}")["registered_model"]
        return {a["alias"]: a["version"] for a in model.get("aliases", [])}["champion"]

    assert [v["version"] for v in versions()] == ["1"] and champion() == "1"

    # Execution 2 (the next scheduled run) is stopped with `ray job stop` during its first trial: the
    # driver gets SIGTERM and stops like Tune on Ctrl+C within the grace period the job asked for;
    # `--resume` then finishes the execution.
    c = submit("sweep-c", wait=False, env_vars={"RAY_JOB_STOP_WAIT_TIME_S": "120"})
    assert c.returncode == 0, c.stdout + c.stderr
    deadline = time.monotonic() + 300
    while not any(
        t.state == TrialState.RUNNING and t.user_attrs.get("execution") == 2 for t in study_trials(study_url, "nightly")
    ):
        assert cluster.jobs_api("sweep-c")["status"] not in TERMINAL, logs("sweep-c")[-3000:]
        assert time.monotonic() < deadline, "execution 2 started no trial"
        time.sleep(1.0)
    stop = subprocess.run(
        [ray_cli, "job", "stop", "sweep-c"], env=cluster.client_env, capture_output=True, text=True, timeout=200
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    c_info, c_logs = _wait_job(cluster, "sweep-c"), logs("sweep-c")
    assert c_info["status"] == "STOPPED", c_info
    assert "SIGTERM: stopping the sweep" in c_logs and "continue it with --resume" in c_logs, c_logs[-3000:]
    stopped_parent = next(r for r in runs("sweep") if tags(r["data"])["deptune.execution"] == "2")
    assert stopped_parent["info"]["status"] == "KILLED"  # closed by the driver, not left RUNNING
    trials = study_trials(study_url, "nightly")
    assert len(versions()) == 1  # an interrupted execution registers nothing
    assert [t.state for t in trials if t.user_attrs["execution"] == 1] == [TrialState.COMPLETE] * 2

    d = submit("sweep-d", "--resume")
    d_logs = logs("sweep-d")
    assert d.returncode == 0 and cluster.jobs_api("sweep-d")["status"] == "SUCCEEDED", d_logs[-3000:]
    assert "study nightly: 4 complete" in d_logs and "execution 2 (nightly-002)" in d_logs, d_logs[-3000:]
    trials = study_trials(study_url, "nightly")
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert sorted(t.user_attrs["execution"] for t in trials) == [1, 1, 2, 2]
    assert min(t.user_attrs["seen_trials"] for t in trials if t.user_attrs["execution"] == 2) >= 2
    parents, children = runs("sweep"), runs("trial")
    assert len(parents) == 2 and all(r["info"]["status"] == "FINISHED" for r in parents)
    assert len(children) == 4 and all(r["info"]["status"] == "FINISHED" for r in children), [
        (tags(r["data"]).get("deptune.optuna_trial"), r["info"]["status"]) for r in children
    ]
    found = versions()
    assert [v["version"] for v in found] == ["1", "2"]
    values = [float(tags(v)["deptune.metric_value"]) for v in found]
    assert champion() == ("2" if values[1] > values[0] else "1"), values
