"""`report`, `predict`, `promote` and `sync` held to `sweep`'s standard (issue 22): a bad or unreachable
`--uri`, a value outside an option's choices or range, something that is not there (a folder, a run, a
model, a metric) or an unreadable `--file` is one line and exit 2: no traceback, no password, nothing
written (no ./mlflow.db made by reading, the store untouched), no Ray, and a store that does not answer
fails in seconds (MLflow's own retries take minutes).

Each case runs in-process (`typer.testing.CliRunner`) in an empty working folder; the store the cases
read is a small sqlite MLflow store made once per module, outside that folder.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from deptune.cli import app

SECRET = "S3cr3tPW"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """An MLflow store holding experiment `demo` with one trial run (no adapter): its URI and the run's id."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("demo", artifact_location=(folder / "artifacts").as_uri())
    run = client.create_run(experiment, tags={"deptune.role": "trial"}, run_name="trial-000")
    client.log_metric(run.info.run_id, "best_objective", 0.8)
    client.log_metric(run.info.run_id, "objective_per_eval", 0.8, step=10)
    client.set_terminated(run.info.run_id)
    return {"uri": uri, "run": run.info.run_id, "db": f"{folder}/mlflow.db"}


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def quiet(monkeypatch, tmp_path):
    """An empty working folder, no tracking URI from the environment, and `ray.init` as a tripwire."""
    from deptune.cli import READING_MLFLOW_ENV

    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "RAY_ADDRESS",
        *READING_MLFLOW_ENV,
    ):
        monkeypatch.setenv(name, "")  # recorded as unset, so what a command sets is removed after the test
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def tripwire(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", tripwire)


@dataclass(frozen=True)
class Bad:
    """A command line (`{uri}`, `{run}`, `{port}`, `{silent}`, `{tmp}` filled in), what its one error line
    mentions, and files to make in the working folder first."""

    id: str
    args: tuple[str, ...]
    mentions: tuple[str, ...] = ()
    make: Callable[[Path], None] | None = None
    seconds: float = 10.0


def write(name: str, data: bytes) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).write_bytes(data)

    return make


def journal(tmp: Path) -> None:
    """An execution's journal folder holding one run's unsent write."""
    (tmp / "journals" / "run-1" / "ops").mkdir(parents=True)
    (tmp / "journals" / "run-1" / "ops" / "00000001.json").write_text('{"op": "tags", "tags": {}}')


HTTP_WITH_PASSWORD = f"http://alice:{SECRET}@127.0.0.1:{{port}}"
PG_WITH_PASSWORD = f"postgresql://bob:{SECRET}@127.0.0.1:{{port}}/mlflow"

BAD_COMMANDS = [
    # report
    Bad("report-in-an-empty-folder", ("report", "demo"), ("--uri", "no MLflow store")),
    Bad(
        "report-server-down-with-password",
        ("report", "demo", "--uri", HTTP_WITH_PASSWORD),
        ("cannot be reached", "alice:***@"),
    ),
    Bad("report-postgres-down-with-password", ("report", "demo", "--uri", PG_WITH_PASSWORD), ("bob:***@",)),
    Bad(
        "report-server-that-never-answers",
        ("report", "demo", "--uri", "http://127.0.0.1:{silent}"),
        ("cannot be reached",),
        seconds=8.0,
    ),
    Bad("report-unknown-scheme", ("report", "demo", "--uri", "foo://host"), ("unknown scheme",)),
    Bad("report-uri-without-scheme", ("report", "demo", "--uri", f"alice:{SECRET}@127.0.0.1:5000"), ("no scheme",)),
    Bad("report-missing-sqlite-store", ("report", "demo", "--uri", "sqlite:///{tmp}/nope.db"), ("no MLflow store",)),
    Bad("report-mode-sideways", ("report", "demo", "--uri", "{uri}", "--mode", "sideways"), ("--mode",)),
    Bad("report-top-negative", ("report", "demo", "--uri", "{uri}", "--top", "-3"), ("--top",)),
    Bad(
        "report-metric-nobody-logged",
        ("report", "demo", "--uri", "{uri}", "--metric", "nosuch"),
        ("--metric 'nosuch'", "best_objective"),
    ),
    Bad("report-experiment-not-there", ("report", "nosuch", "--uri", "{uri}"), ("no MLflow experiment 'nosuch'",)),
    # predict
    Bad(
        "predict-model-not-registered",
        ("predict", "models:/nosuch/1", "--uri", "{uri}", "--text", "x"),
        ("models:/nosuch/1",),
    ),
    Bad("predict-model-folder-not-there", ("predict", "{tmp}/nope", "--text", "x"), ("no model there",)),
    Bad("predict-in-an-empty-folder", ("predict", "models:/demo/1", "--text", "x"), ("no MLflow store",)),
    Bad(
        "predict-server-down-with-password",
        ("predict", "models:/demo/1", "--uri", HTTP_WITH_PASSWORD, "--text", "x"),
        ("cannot be reached",),
    ),
    Bad(
        "predict-empty-file",
        ("predict", "models:/demo/1", "--uri", "{uri}", "--file", "{tmp}/rows.csv"),
        ("rows.csv", "empty"),
        make=write("rows.csv", b""),
    ),
    Bad(
        "predict-file-not-utf8",
        ("predict", "models:/demo/1", "--uri", "{uri}", "--file", "{tmp}/rows.csv"),
        ("rows.csv:3", "UTF-8"),
        make=write("rows.csv", b"sentence\nfine\nd\xe9j\xe0 vu\n"),
    ),
    Bad(
        "predict-file-bad-jsonl-line",
        ("predict", "models:/demo/1", "--uri", "{uri}", "--file", "{tmp}/rows.jsonl"),
        ("rows.jsonl:2", "not JSON"),
        make=write("rows.jsonl", b'{"sentence": "a"}\n{"sentence": \n'),
    ),
    Bad(
        "predict-file-not-there",
        ("predict", "models:/demo/1", "--uri", "{uri}", "--file", "{tmp}/nope.csv"),
        ("nope.csv",),
    ),
    Bad(
        "predict-file-unknown-type",
        ("predict", "models:/demo/1", "--uri", "{uri}", "--file", "{tmp}/rows.xlsx"),
        ("rows.xlsx",),
        make=write("rows.xlsx", b"x"),
    ),
    # promote
    Bad(
        "promote-run-not-there",
        ("promote", "0123456789abcdef0123456789abcdef", "--model", "m", "--uri", "{uri}"),
        ("0123456789abcdef0123456789abcdef",),
    ),
    Bad("promote-run-without-adapter", ("promote", "{run}", "--model", "m", "--uri", "{uri}"), ("adapter",)),
    Bad(
        "promote-mode-sideways",
        ("promote", "{run}", "--model", "m", "--uri", "{uri}", "--mode", "sideways"),
        ("--mode",),
    ),
    Bad("promote-in-an-empty-folder", ("promote", "{run}", "--model", "m"), ("no MLflow store",)),
    Bad(
        "promote-server-down-with-password",
        ("promote", "{run}", "--model", "m", "--uri", HTTP_WITH_PASSWORD),
        ("cannot be reached",),
    ),
    # sync
    Bad("sync-folder-not-there", ("sync", "{tmp}/nope"), ("nope",)),
    Bad("sync-a-file", ("sync", "{tmp}/afile"), ("afile",), make=write("afile", b"x")),
    Bad("sync-folder-without-journals", ("sync", "{tmp}"), ("holds no journal",)),
    Bad(
        "sync-server-down-with-password",
        ("sync", "{tmp}/journals", "--uri", HTTP_WITH_PASSWORD),
        ("cannot be reached",),
        make=journal,
    ),
    Bad("sync-in-a-folder-without-a-store", ("sync", "{tmp}/journals"), ("no MLflow store",), make=journal),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("bad", BAD_COMMANDS, ids=[b.id for b in BAD_COMMANDS])
def test_a_bad_command_line_is_one_line_and_exit_2(
    quiet, tmp_path, store, closed_port, silent_server, monkeypatch, bad
):
    from deptune.tracking import store as tracking_store

    monkeypatch.setattr(tracking_store, "CONNECT_TIMEOUT_S", 2)
    if bad.make:
        bad.make(tmp_path)
    fill = {"uri": store["uri"], "run": store["run"], "port": closed_port, "silent": silent_server, "tmp": tmp_path}
    args = [a.format(**fill) for a in bad.args]
    before, store_before = _tree(tmp_path), _digest(store["db"])
    started = time.perf_counter()
    result = CliRunner().invoke(app, args, env={"COLUMNS": "240"})  # a path is never wrapped mid-name
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, f"exit {result.exit_code} ({result.exception!r}):\n{result.output}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled: no traceback
    assert "Traceback" not in result.output and SECRET not in result.output, result.output
    for text in bad.mentions:
        assert text in result.output, result.output
    assert _tree(tmp_path) == before, f"written: {_tree(tmp_path) - before}"
    assert _digest(store["db"]) == store_before, "the store was written"
    assert seconds < bad.seconds, f"{seconds:.1f} s"
    assert not ray.is_initialized()


def test_the_store_is_readable_by_report(quiet, store):
    """The control: the store the cases read is one `report` reads."""
    result = CliRunner().invoke(app, ["report", "demo", "--uri", store["uri"]])
    assert result.exit_code == 0, result.output
    assert "trial-000" in result.output


def test_a_password_in_the_uri_never_reaches_mlflow(quiet, store, monkeypatch):
    """An http(s) --uri with userinfo becomes MLflow's basic-auth environment; what MLflow is handed has none."""
    from deptune.cli import reading_store
    from deptune.tracking import store as tracking_store

    monkeypatch.setattr(tracking_store, "check_store", lambda uri, key="--uri", given=None: None)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")
    assert reading_store(f"http://alice:{SECRET}@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", SECRET)
