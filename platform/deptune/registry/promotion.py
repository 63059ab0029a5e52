"""Model Registry: a trial's best adapter becomes a new version of a registered pyfunc model; the alias
`champion` moves to it only if it beats the current champion on the same task and metric.

The compare-and-move runs under a lock (`deptune.locks`) on the team's shared database, so two promotions
racing cannot both read the old champion and both win.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from deptune import locks
from deptune.registry.pyfunc import ADAPTER, input_columns, save_pyfunc
from deptune.tracking.store import TAG
from deptune.tracking.trial import RENAMED

CHAMPION = "champion"
LOCK_ENV = "DEPTUNE_LOCK_URL"


@dataclass(frozen=True)
class Promotion:
    model: str
    version: str
    value: float
    champion: bool  # the alias now points at this version
    previous: str | None  # the champion version before
    reason: str
    run_id: str | None = None  # the trial run whose adapter it is

    @property
    def uri(self) -> str:
        return f"models:/{self.model}/{self.version}"


def default_lock_url() -> str:
    """$DEPTUNE_LOCK_URL, else a file lock on this machine (a cluster should point it at PostgreSQL)."""
    path = Path.home() / ".cache" / "deptune" / "locks.db"
    return os.environ.get(LOCK_ENV) or f"sqlite:///{path}"


def best_value(client: MlflowClient, run_id: str, metric: str, mode: str) -> float:
    """The run's best value of `metric` over its evaluations (`objective` is logged as objective_per_eval)."""
    history = [m.value for m in client.get_metric_history(run_id, RENAMED.get(metric, metric))]
    if not history:
        history = [m.value for m in client.get_metric_history(run_id, metric)]
    if not history:
        raise ValueError(f"run {run_id} has no metric {metric!r}")
    return max(history) if mode == "max" else min(history)


def promotable(run_id: str, metric: str, mode: str, uri: str | None = None) -> str | None:
    """Why `run_id` cannot be promoted (no adapter artifact, no such metric), found before anything is
    registered; None when it can be. A run that does not exist raises MLflow's RESOURCE_DOES_NOT_EXIST."""
    client = MlflowClient(tracking_uri=uri)
    client.get_run(run_id)
    if not client.list_artifacts(run_id, ADAPTER):
        return f"run {run_id} has no `{ADAPTER}` artifact: promote a trial run of a sweep"
    try:
        best_value(client, run_id, metric, mode)
    except ValueError as exc:
        return str(exc)
    return None


def promote(
    run_id: str,
    model: str,
    metric: str = "objective",
    mode: str = "max",
    uri: str | None = None,
    lock_url: str | None = None,
    lineage: dict[str, str] | None = None,
) -> Promotion:
    """Register `run_id`'s adapter as a new version of `model`; move `champion` if it is better. `lineage`:
    more tags of the version (each named with deptune's tag prefix)."""
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    value = best_value(client, run_id, metric, mode)
    task = run.data.params.get("task", "")
    version = _register(
        client,
        run,
        model,
        task,
        {
            **{f"{TAG}{k}": v for k, v in (lineage or {}).items()},
            f"{TAG}run_id": run_id,
            f"{TAG}metric": metric,
            f"{TAG}metric_value": repr(value),
            f"{TAG}mode": mode,
            f"{TAG}task": task,
            f"{TAG}backbone": run.data.params.get("backbone", ""),
            **{k: v for k, v in run.data.tags.items() if k.startswith(TAG) and k != f"{TAG}role"},
        },
    )
    with locks.exclusive(f"champion:{model}", lock_url or default_lock_url(), wait_s=120):
        crowned = _maybe_crown(client, model, version, value, metric, mode, task)
    return Promotion(**{**crowned.__dict__, "run_id": run_id})


def _register(client: MlflowClient, run, model: str, task: str, tags: dict[str, str]) -> str:
    """The pyfunc (backbone + adapter) as a logged model of the run, named after the registered model and
    the run, then a new registered version linked both ways (the version's model_id, the logged model's
    `mlflow.modelVersions` tag, which the server sets, or else this does as `mlflow.register_model`)."""
    from mlflow.artifacts import download_artifacts

    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    with tempfile.TemporaryDirectory(prefix="deptune-promote-") as tmp:
        adapter = Path(
            download_artifacts(
                run_id=run_id, artifact_path=ADAPTER, dst_path=f"{tmp}/a", tracking_uri=client.tracking_uri
            )
        )
        spec = Path(
            download_artifacts(
                run_id=run_id, artifact_path="spec/run_spec.json", dst_path=f"{tmp}/s", tracking_uri=client.tracking_uri
            )
        )
        example = {column: [f"an example {column}"] for column in input_columns(task)}
        local = save_pyfunc(Path(tmp) / "model", adapter, spec, example)
        logged = client.create_logged_model(
            experiment_id,
            name=f"{model}-{run.info.run_name}".replace(" ", "-"),
            source_run_id=run_id,
            tags={f"{TAG}task": task},
        )
        client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, "READY")
    try:
        client.create_registered_model(
            model,
            description="DePT adapters registered by deptune: the frozen "
            "backbone plus a trained adapter, as an MLflow pyfunc",
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client.create_model_version(
        model,
        source=logged.artifact_location,
        run_id=run_id,
        tags={**tags, f"{TAG}logged_model": logged.model_id},
        model_id=logged.model_id,
        description=f"Logged model `{logged.name}` ({logged.model_id}) of run {run.info.run_name} ({run_id}): "
        f"the frozen backbone plus the run's best adapter (safetensors), as an MLflow pyfunc "
        f"loaded from code.",
    )
    found = client.get_logged_model(logged.model_id).tags.get("mlflow.modelVersions")
    versions = json.loads(found) if found else []
    if not any((v.get("name"), str(v.get("version"))) == (model, str(created.version)) for v in versions):
        # a server that did not link them itself (3.17 does, given model_id)
        client.set_logged_model_tags(
            logged.model_id,
            {"mlflow.modelVersions": json.dumps(versions + [{"name": model, "version": created.version}])},
        )
    return created.version


def _maybe_crown(
    client: MlflowClient, model: str, version: str, value: float, metric: str, mode: str, task: str
) -> Promotion:
    try:
        current = client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        current = None
    if current is None:
        crowned, reason = True, "no champion yet"
    elif (current.tags.get(f"{TAG}task"), current.tags.get(f"{TAG}metric")) != (task, metric):
        crowned, reason = (
            False,
            (
                f"champion v{current.version} is scored on {current.tags.get(f'{TAG}task')}/"
                f"{current.tags.get(f'{TAG}metric')}, not {task}/{metric}: not comparable"
            ),
        )
    else:
        old = float(current.tags[f"{TAG}metric_value"])
        crowned = value > old if mode == "max" else value < old
        reason = f"{metric} {value:.4g} vs champion v{current.version} {old:.4g}"
    if crowned:
        client.set_registered_model_alias(model, CHAMPION, version)
    client.set_model_version_tag(model, version, f"{TAG}role", CHAMPION if crowned else "challenger")
    client.set_model_version_tag(model, version, f"{TAG}promotion", reason)
    return Promotion(model, version, value, crowned, current.version if current else None, reason)
