"""`deptune report`: an experiment's trials from MLflow as a terminal leaderboard."""

from __future__ import annotations

from mlflow import MlflowClient
from rich.table import Table

from deptune.methods.config import LR_PREFIX
from deptune.tracking.store import TAG
from deptune.tracking.tables import fmt, wide_console


def trial_mlflow_runs(uri: str, experiment: str, metric: str, mode: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise LookupError(f"no MLflow experiment {experiment!r} at {uri}; experiments: {', '.join(names) or 'none'}")
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{TAG}role` = 'trial'", max_results=5000)
    if runs and metric != "objective" and all(_score(r.data.metrics, metric) is None for r in runs):
        known = sorted({m for r in runs for m in r.data.metrics})
        raise LookupError(
            f"--metric {metric!r}: no trial run of {experiment!r} logged it; they logged "
            f"{', '.join(known) or 'no metric'}"
        )
    scored = [r for r in runs if _score(r.data.metrics, metric) is not None]
    scored.sort(key=lambda r: _score(r.data.metrics, metric), reverse=mode == "max")
    return scored + [r for r in runs if _score(r.data.metrics, metric) is None]


def _score(metrics: dict[str, float], metric: str) -> float | None:
    """The run's best objective (the loop reports the best so far), else the metric's latest value."""
    return metrics.get("best_objective") if metric == "objective" else metrics.get(metric)


def render_experiment(uri: str, experiment: str, metric: str = "objective", mode: str = "max", top: int = 20) -> None:
    runs = trial_mlflow_runs(uri, experiment, metric, mode)
    table = Table(title=f"{experiment}: {len(runs)} trial runs in {uri}")
    score = "best objective" if metric == "objective" else metric
    searched = searched_columns([r.data.params for r in runs[:top]])
    gpus = any(r.data.metrics.get("gpu_seconds") for r in runs[:top])
    for column in (
        "run",
        "sweep",
        "status",
        "state",
        "m",
        "r",
        score,
        *searched,
        "trainable",
        "CPU-s",
        *(["GPU-s"] if gpus else []),
    ):
        table.add_column(column, justify="left" if column in ("run", "sweep", "status", "state") else "right")
    for run in runs[:top]:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        table.add_row(
            run.info.run_name,
            tags.get(f"{TAG}sweep", "-"),
            run.info.status,
            tags.get(f"{TAG}state", "-"),
            params.get("prompt_length", "-"),
            params.get("rank", "-"),
            fmt(_score(metrics, metric)),
            *(_number(params.get(key)) for key in searched),
            _number(params.get("trainable_params")),
            fmt(metrics.get("cpu_seconds")),
            *([fmt(metrics.get("gpu_seconds"))] if gpus else []),
        )
    wide_console().print(table)


def searched_columns(params: list[dict[str, str]]) -> list[str]:
    """The learning rates (`lr_<group>`, whatever the method's groups) and every other param the runs
    differ in (a method's own dimension), m and r aside: the columns come from what the runs logged."""
    keys = {key for p in params for key in p} - {"prompt_length", "rank"}
    rates = sorted(k for k in keys if k.startswith(LR_PREFIX))
    varying = sorted(k for k in keys - set(rates) - RUN_SETTINGS if len({p[k] for p in params if k in p}) > 1)
    return rates + varying


RUN_SETTINGS = {"seed", "steps", "batch_size", "workers", "runner", "backbone", "backbone_revision", "task"}
"""Params of how a run ran, not of what was searched (they differ between sweeps in one experiment)."""


def _number(param: str | None) -> str:
    """A logged param (a string) as the leaderboard shows numbers."""
    try:
        return fmt(float(param)) if param not in (None, "None") else "-"
    except ValueError:
        return param
