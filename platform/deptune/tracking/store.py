"""Which MLflow store a sweep talks to, and whether it answers, decided before any Ray work."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from deptune.spec_base import SpecError, database_url_problem, redact

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
KIND_TAG = "mlflow.experimentKind"
TAG = "deptune."
"""The prefix of every tag deptune sets on runs and model versions."""


URI_ENV = "MLFLOW_TRACKING_URI"
DB_BACKENDS = ("sqlite", "postgresql", "postgres", "mysql", "mssql")
"""The databases MLflow keeps a tracking store in."""
OTHER_SCHEMES = ("http", "https", "file", "databricks", "databricks-uc", "uc")
CONNECT_TIMEOUT_S = 5
"""How long a store may take to answer the first check: a server that is down fails in seconds, not after
MLflow's retries (251 s over HTTP; minutes for PostgreSQL)."""
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_HOST_PORT = re.compile(r"^[\w.-]+:\d+$")
_USERINFO = re.compile(r"^[^:@]+:[^@]*@")


def uri_problem(uri: str) -> str | None:
    """Why `uri` (resolved) is no tracking URI MLflow can use, from its form alone (reachability is the
    command's to check); None when it is one. Never echoes the URI."""
    scheme = _SCHEME.match(uri)
    if scheme is None:  # a folder: MLflow's file store (`resolve_uri` made it absolute), unless it reads as a URL
        if any(_HOST_PORT.match(part) or _USERINFO.match(part) for part in Path(uri).parts):
            return "has no scheme: write http://HOST:PORT for a server, or sqlite:///PATH for a database file"
        return None
    name = scheme.group(1).lower()
    if name.split("+")[0] in DB_BACKENDS:
        return database_url_problem(uri)
    if name not in OTHER_SCHEMES:
        return (
            f"unknown scheme {name + '://'!r}; MLflow tracks to http(s)://HOST:PORT, sqlite:///PATH, "
            f"postgresql://USER@HOST/DB, mysql://..., or a folder"
        )
    if name in ("http", "https"):
        parts = urlsplit(uri)
        try:
            _ = parts.port  # urlsplit parses the port lazily: reading it is the check
        except ValueError:
            return "its port is not a number from 0 to 65535"
        if not parts.hostname:
            return f"names no host: write {name}://HOST:PORT"
    return None


def missing_store(uri: str) -> str | None:
    """Why a store a command only reads is not there (a sqlite file, or a file store's folder, that does not
    exist): opening it would create an empty one. None when it may be there."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return None if path.is_file() else f"there is no MLflow store there ({path} does not exist)"
    if "://" not in uri or uri.startswith("file:"):
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        return None if path.is_dir() else f"there is no MLflow store there ({path} does not exist)"
    return None


def check_store(uri: str, key: str = "--uri", given: str | None = None) -> None:
    """For a command that reads a store (report, predict, promote, sync, a models:/ source adapter): the
    URI's form, the store there (never created by reading it), and its answer within seconds; every
    problem a `SpecError` line under `key`, the URI (as `given`, before `resolve_uri`) redacted."""
    if problem := uri_problem(uri) or missing_store(uri):
        raise SpecError(key, [f"{key}: {redact(given or uri)}: {problem}"])
    check_reachable(uri, key, key, existing=True)


def _is_database(uri: str) -> bool:
    return bool(scheme := _SCHEME.match(uri)) and scheme.group(1).lower().split("+")[0] in DB_BACKENDS


def _database_problem(uri: str, existing: bool) -> str | None:
    """One connection attempt with a short timeout (MLflow's own store retries for minutes); `existing`:
    the database must hold MLflow's tables already."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    timeout = {"connect_timeout": CONNECT_TIMEOUT_S} if uri.startswith(("postgres", "mysql")) else {}
    engine = create_engine(uri, connect_args=timeout, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if existing and not inspect(connection).has_table("experiments"):
                return "the database holds no MLflow store (no MLflow tables)"
    except Exception as exc:  # noqa: BLE001 -- drivers raise many kinds; the first line says what happened
        return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    finally:
        engine.dispose()
    return None


def resolve_uri(configured: str | None, base: Path | None = None) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else the embedded default `sqlite:///<cwd>/mlflow.db`.
    Relative sqlite paths become absolute: trial workers run in other folders."""
    uri = configured or os.environ.get(URI_ENV) or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{((base or Path.cwd()) / uri.removeprefix('sqlite:///')).resolve()}"
    elif "://" not in uri:  # a plain folder: MLflow's file store
        uri = str(((base or Path.cwd()) / uri).resolve())
    return uri


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go to `mlartifacts/` beside the database; a server decides its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None


def check_reachable(uri: str, source: str, key: str = "tracking.uri", existing: bool = False) -> None:
    """A quick read against the store: a server that is down or a bad URI is a spec error, before Ray.
    A sqlite store that does not exist yet is not created here (only its folder is checked): nothing is
    written before the whole spec is accepted. Messages show the URI redacted; a store that does not
    answer fails within CONNECT_TIMEOUT_S. `existing`: a database must already hold an MLflow store (a
    command that reads one must not create its tables)."""
    shown = redact(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        if problem := _uncreatable(Path(uri.removeprefix("sqlite:///"))):
            raise SpecError(source, [f"{key}: cannot open the MLflow store {shown}: {problem}"])
        return
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(
                f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                params={"max_results": 1},
                timeout=CONNECT_TIMEOUT_S,
                auth=_basic_auth(),
            )
        except requests.RequestException as exc:
            raise SpecError(
                source,
                [
                    f"{key}: MLflow at {shown} cannot be reached ({type(exc).__name__}); start the "
                    f"server or fix {key} / ${URI_ENV}"
                ],
            ) from None
        if response.status_code != 200:
            hint = (
                " (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
                if response.status_code in (401, 403)
                else ""
            )
            raise SpecError(
                source,
                [f"{key}: MLflow at {shown} answered HTTP {response.status_code}{hint}: {redact(response.text[:200])}"],
            )
        return
    if _is_database(uri) and (problem := _database_problem(uri, existing)):
        raise SpecError(source, [f"{key}: cannot open the MLflow store {shown}: {redact(problem)}"])
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 -- sqlalchemy/mlflow raise many kinds; the message is what matters
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise SpecError(source, [f"{key}: cannot open the MLflow store {shown}: {redact(first)}"]) from None


def _uncreatable(path: Path) -> str | None:
    """Why a file at `path` could not be created (its nearest existing ancestor is no writable folder)."""
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK) or str(existing.resolve()).startswith(("/proc", "/sys")):
        return f"{existing} is not writable"
    return None


def _basic_auth() -> tuple[str, str] | None:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created (with the embedded default's artifact folder) if missing."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name, artifact_location=artifact_location(uri))
    else:
        experiment_id = experiment.experiment_id
    if experiment is None or KIND_TAG not in experiment.tags:  # the UI's runs table, not its GenAI overview
        client.set_experiment_tag(experiment_id, KIND_TAG, "custom_model_development")
    return experiment_id


CLASSIC_VIEW = "workflowType=machine_learning"
"""The query that opens the MLflow UI (3.x) on its machine-learning pages (runs table, charts, compare) rather
than its GenAI default, whatever the browser last chose; the experiment's `mlflow.experimentKind` tag does the
same for the experiment list."""
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the MLflow UI's saved views (3.15+): one experiment tag each
TRIALS_VIEW = "deptune-trials"


def trials_view_state(columns: list[str], metrics: list[str], tags: list[str], order_by: str, ascending: bool) -> dict:
    """The runs table the UI opens with `?viewStateShareKey=deptune-trials` (or from its Views menu): the
    trials only, flat, best first, with the columns that matter. Column keys are the UI's own
    (params.`m`, metrics.`best_objective`, tags.`deptune.state`)."""
    selected = [f"params.`{c}`" for c in columns] + [f"metrics.`{m}`" for m in metrics] + [f"tags.`{t}`" for t in tags]
    return {
        "searchFilter": f"tags.`{TAG}role` = 'trial'",
        "orderByKey": f"metrics.`{order_by}`",
        "orderByAsc": ascending,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "selectedColumns": selected,
        "columnOrder": [],
        "runsExpanded": {},
    }


def save_trials_view(uri: str, experiment_id: str, state: dict, name: str = "deptune: trials, best first") -> str:
    """Store `state` as the experiment's saved view `deptune-trials` (MLflow cannot set an experiment's
    default columns; a saved view is one click away, in the runs table's Views menu). The tag's format is
    the UI's, not a documented API: a UI that reads it differently just ignores it. Returns the view's
    URL fragment."""
    import json
    import time

    from mlflow import MlflowClient

    envelope = {"name": name, "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
    MlflowClient(tracking_uri=uri).set_experiment_tag(
        experiment_id, VIEW_TAG_PREFIX + TRIALS_VIEW, json.dumps(envelope)
    )
    return f"#/experiments/{experiment_id}/runs?{CLASSIC_VIEW}&viewStateShareKey={TRIALS_VIEW}"
