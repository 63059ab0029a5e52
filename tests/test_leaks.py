"""Nothing a sweep produces holds a password: a real sweep (`deptune sweep` in a subprocess, a local Ray,
one tiny trial) with the password in the study URL (PostgreSQL on 127.0.0.1, whose trust auth takes any
password) and in the tracking URI (an `mlflow server` on 127.0.0.1 behind its basic-auth app, the user
and password as the URI's userinfo), then every byte it left is searched: stdout, stderr, the MLflow
server's store and artifacts (params, tags, metrics, the spec artifact, the registered model), the runs'
params and tags as the API returns them, the study's attributes, the output folder (journals, Tune's
experiment state and searcher checkpoints, trial folders, reports) and the Ray session's logs.

Also: the local Ray token file and deptune's journal folder are their owner's only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from deptune.methods.record import read_record
from local_cluster import free_ports, group_pids
from stores import mlflow_store

PG_ENV = "DEPTUNE_TEST_POSTGRES_URL"
USER = "deptune"


def _start_mlflow(folder: Path, password: str) -> tuple[subprocess.Popen, str]:
    """`mlflow server --app-name basic-auth` on a free 127.0.0.1 port, admin `deptune` with `password`."""
    folder.mkdir()
    config = folder / "basic_auth.ini"
    config.write_text(
        f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{folder}/auth.db\n"
        f"admin_username = {USER}\nadmin_password = {password}\n"
        f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    mlflow = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [
            mlflow,
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            mlflow_store(folder),
            "--serve-artifacts",
            "--artifacts-destination",
            str(folder / "mlartifacts"),
            "--workers",
            "1",
        ],
        cwd=folder,
        env=env,
        stdout=open(folder / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError("mlflow server did not start: " + (folder / "server.log").read_text()[-3000:])


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    for _ in range(50):
        if not group_pids(server.pid):
            return
        time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)


def _files(*roots: Path, skip: tuple[Path, ...] = ()) -> list[Path]:
    return [
        p
        for root in roots
        if root.exists()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and p not in skip
    ]


def _holding(needle: bytes, files: list[Path]) -> list[str]:
    found = []
    for path in files:
        try:
            if needle in path.read_bytes():
                found.append(str(path))
        except OSError:  # a socket or a file Ray removed meanwhile
            continue
    return found


def _spec(tmp: Path, study_url: str, tracking_uri: str) -> dict:
    return {
        "backbone": {"name": "tiny-bert", "tiny": {"hidden_size": 32, "max_positions": 64, "dropout": 0.0}},
        "task": {"name": "synthetic", "synthetic_size": 120},
        "method": {"name": "dept", "budget": 12, "max_length": 32},
        "search": {"prompt_length": {"low": 2, "high": 8, "step": 2}},
        "train": {
            "steps": 6,
            "batch_size": 16,
            "eval_every": 3,
            "warmup_steps": 1,
            "lr_head": 0.01,
            "output_dir": str(tmp / "out"),
            "evaluate_test": False,
        },
        "resources": {"workers": 1, "cpus_per_worker": 0.75},
        "sweep": {
            "trials": 1,
            "max_concurrent": 1,
            "driver_cpus": 0.25,
            "sampler": {"name": "tpe", "startup_trials": 1},
            "scheduler": {"name": "fifo"},
        },
        "study": {"name": f"leaks-{secrets.token_hex(4)}", "storage": study_url},
        "tracking": {"uri": tracking_uri, "registered_model": f"leaks-{secrets.token_hex(4)}"},
    }


@pytest.mark.slow
def test_a_sweep_with_passwords_in_both_urls_leaves_them_nowhere(tmp_path):
    if not os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} is not set (CI sets it to the PostgreSQL server on 127.0.0.1:5432, trust auth)")
    import optuna
    from mlflow import MlflowClient

    password = "S3cr3t-" + secrets.token_hex(8)
    study_url = (
        make_url(os.environ[PG_ENV]).set(username="postgres", password=password).render_as_string(hide_password=False)
    )
    server, mlflow_url = _start_mlflow(tmp_path / "mlflow", password)
    ray_tmp = Path(tempfile.mkdtemp(prefix="dl-", dir="/tmp"))  # short: Ray's socket paths are limited
    tracking_uri = mlflow_url.replace("http://", f"http://{USER}:{password}@")
    spec_path = tmp_path / "leaks.yaml"
    spec = _spec(tmp_path, study_url, tracking_uri)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_", "DEPTUNE_STUDY_STORAGE", "DEPTUNE_LOCK_URL"))
    }
    env["RAY_TMPDIR"] = str(ray_tmp)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "deptune.cli", "sweep", str(spec_path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-6000:]
        leaks = [f"output line: {line}" for line in output.splitlines() if password in line]
        assert "***" in output  # the study and tracking URLs are shown, masked
        best = re.search(r"^best adapter: (.+)$", run.stdout, re.MULTILINE)  # the trial ran in its Tune actor
        assert best and read_record(best.group(1)).method == "dept", run.stdout[-3000:]

        # MLflow holds the sweep (so there was something to leak), and no param, tag or artifact holds it.
        auth_env = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": password}
        os.environ.update(auth_env)
        try:
            client = MlflowClient(tracking_uri=mlflow_url)
            experiment = client.get_experiment_by_name(spec["study"]["name"])
            runs = client.search_runs([experiment.experiment_id])
            assert {r.data.tags.get("deptune.role") for r in runs} == {"sweep", "trial"}, [r.data.tags for r in runs]
            for r in runs:
                assert password not in json.dumps([r.data.params, r.data.tags, sorted(r.data.metrics)])
            parent = next(r for r in runs if r.data.tags.get("deptune.role") == "sweep")
            spec_artifact = Path(client.download_artifacts(parent.info.run_id, "spec", str(tmp_path / "dl")))
            copied = (spec_artifact / spec_path.name).read_text()
            assert "postgres:***@127.0.0.1" in copied and f"{USER}:***@127.0.0.1" in copied, copied
            assert yaml.safe_load(copied)["sweep"] == spec["sweep"]  # the rest of the spec as written
            versions = client.search_model_versions(f"name = '{spec['tracking']['registered_model']}'")
            assert len(versions) == 1 and password not in json.dumps([versions[0].tags, versions[0].source])
        finally:
            for key in auth_env:
                os.environ.pop(key, None)

        # The study's attributes.
        study = optuna.load_study(study_name=spec["study"]["name"], storage=study_url)
        attrs = [study.user_attrs, *([t.user_attrs, t.params] for t in study.get_trials())]
        assert len(study.get_trials()) == 1 and password not in json.dumps(attrs, default=str)

        # Every file: the MLflow server's store and artifacts, the output folder, the Ray session's logs.
        # (the server's auth config holds the password by design, its user store a hash of it)
        everything = _files(
            tmp_path, skip=(spec_path, tmp_path / "mlflow" / "basic_auth.ini", tmp_path / "mlflow" / "auth.db")
        )
        ray_files = _files(ray_tmp)
        assert any("mlflow-journal" in str(p) for p in everything) and any("/out/ray/" in str(p) for p in everything)
        assert any("mlartifacts" in str(p) for p in everything), "the server stored artifacts"
        assert any(p.suffix in (".log", ".out", ".err") for p in ray_files), "Ray's logs are searched"
        leaks += _holding(password.encode(), everything + ray_files)
        assert leaks == [], "the password is in:\n" + "\n".join(leaks)

        # The local Ray's token and deptune's journal folder are their owner's only.
        token = Path.home() / ".ray" / "auth_token"
        if token.exists() and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            assert token.stat().st_mode & 0o077 == 0, oct(token.stat().st_mode)
        assert (tmp_path / "out" / "mlflow-journal").stat().st_mode & 0o077 == 0
    finally:
        _stop(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        optuna.delete_study(study_name=spec["study"]["name"], storage=study_url) if _exists(spec, study_url) else None


def _exists(spec: dict, url: str) -> bool:
    import optuna

    try:
        return any(s.study_name == spec["study"]["name"] for s in optuna.get_all_study_summaries(url))
    except Exception:  # noqa: BLE001 -- cleanup only
        return False


# ----- the pieces, without Ray ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://optuna:hunter2@db:5432/deptune", "postgresql://optuna:***@db:5432/deptune"),
        ("postgresql+psycopg://u:p@ss@db/x?options=-csearch_path%3Doptuna", "postgresql+psycopg://u:***@db/x?options="),
        (
            "MLflow at http://alice:S3cr3tPW@127.0.0.1:1 cannot be reached",
            "MLflow at http://alice:***@127.0.0.1:1 cannot",
        ),
        ("study: {storage: 'mysql://root:pw@h/db'}\n", "study: {storage: 'mysql://root:***@h/db'}\n"),
        ("https://h/api?user=a&password=hunter2&x=1", "https://h/api?user=a&password=***&x=1"),
        ("sqlite:////tmp/study.db and http://127.0.0.1:5000", "sqlite:////tmp/study.db and http://127.0.0.1:5000"),
    ],
)
def test_redact_masks_every_url_password_and_secret_query_value(text, shown):
    from deptune.spec_base import redact

    masked = redact(text)
    assert masked.startswith(shown) and "hunter2" not in masked and "S3cr3tPW" not in masked
    assert ":p@" not in masked and "pw@" not in masked


def test_redact_masks_secret_environment_values(monkeypatch):
    from deptune.spec_base import redact

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "env-secret-123")
    assert redact("request failed: Basic env-secret-123 refused") == "request failed: Basic *** refused"


def test_log_records_are_redacted_when_made(caplog):
    import logging

    from deptune.spec_base import redact_logs

    redact_logs()
    redact_logs()  # idempotent
    with caplog.at_level(logging.WARNING):
        logging.getLogger("mlflow.whatever").warning("cannot reach %s", "http://u:hunter2@127.0.0.1:9")
    assert caplog.messages == ["cannot reach http://u:***@127.0.0.1:9"]


def test_split_credentials_keeps_the_database_user_and_drops_http_userinfo():
    from deptune.spec_base import split_credentials

    assert split_credentials("postgresql+psycopg://pg:S%40cret@127.0.0.1:5432/test") == (
        "postgresql+psycopg://pg@127.0.0.1:5432/test",
        "pg",
        "S@cret",
    )
    assert split_credentials("http://alice:pw@127.0.0.1:5000/") == ("http://127.0.0.1:5000/", "alice", "pw")
    assert split_credentials("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", None, None)


def test_the_local_ray_token_is_created_private_and_an_existing_one_made_private(tmp_path, monkeypatch):
    from deptune.cluster.local import private_ray_token

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = private_ray_token()
    assert path == tmp_path / ".ray" / "auth_token" and len(path.read_text()) == 64
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    token = path.read_text()
    path.chmod(0o644)
    assert private_ray_token() == path and path.read_text() == token and path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert private_ray_token() is None


def test_the_reachability_check_of_a_sqlite_store_creates_nothing(tmp_path):
    from deptune.spec_base import SpecError
    from deptune.tracking.store import check_reachable

    check_reachable(f"sqlite:///{tmp_path}/new/mlflow.db", "spec.yaml")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(SpecError, match="tracking.uri: .* is a file"):
        check_reachable(f"sqlite:///{tmp_path}/file/mlflow.db", "spec.yaml")


def test_an_unreachable_server_is_reported_with_its_password_masked():
    from deptune.spec_base import SpecError
    from deptune.tracking.store import check_reachable

    with pytest.raises(SpecError) as error:
        check_reachable("http://alice:S3cr3tPW@127.0.0.1:9", "spec.yaml")
    assert "S3cr3tPW" not in str(error.value) and "http://alice:***@127.0.0.1:9" in str(error.value)
