"""Which MLflow store a sweep talks to, and whether it answers, decided before any Ray work."""

from __future__ import annotations

import os
from pathlib import Path

from deptune.spec_base import SpecError

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
KIND_TAG = "mlflow.experimentKind"
TAG = "deptune."
"""The prefix of every tag deptune sets on runs and model versions."""


def resolve_uri(configured: str | None, base: Path | None = None) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else the embedded default `sqlite:///<cwd>/mlflow.db`.
    Relative sqlite paths become absolute: trial workers run in other folders."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
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


def check_reachable(uri: str, source: str) -> None:
    """A quick read against the store: a server that is down or a bad URI is a spec error, before Ray."""
    if uri.startswith(("http://", "https://")):
        import requests
        try:
            response = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                                    params={"max_results": 1}, timeout=5,
                                    auth=_basic_auth())
        except requests.RequestException as exc:
            raise SpecError(source, [f"tracking.uri: MLflow at {uri} cannot be reached ({type(exc).__name__}); "
                                     f"start the server or fix tracking.uri / $MLFLOW_TRACKING_URI"]) from None
        if response.status_code != 200:
            raise SpecError(source, [f"tracking.uri: MLflow at {uri} answered HTTP {response.status_code}: "
                                     f"{response.text[:200]}"])
        return
    try:
        from mlflow import MlflowClient
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 -- sqlalchemy/mlflow raise many kinds; the message is what matters
        raise SpecError(source, [f"tracking.uri: cannot open the MLflow store {uri}: "
                                 f"{str(exc).splitlines()[0][:300]}"]) from None


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
