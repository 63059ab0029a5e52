"""`deptune report`: an experiment's trials from MLflow as a terminal leaderboard."""

from __future__ import annotations

from mlflow import MlflowClient
from rich.table import Table

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
    for column in (
        "run",
        "sweep",
        "status",
        "state",
        "m",
        "r",
        score,
        "lr_prompt",
        "lr_lowrank",
        "lr_head",
        "trainable",
        "accelerator-s",
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
            _number(params.get("lr_prompt")),
            _number(params.get("lr_lowrank")),
            _number(params.get("lr_head")),
            fmt(int(metrics["trainable_params"])) if "trainable_params" in metrics else "-",
            fmt(metrics.get("accelerator_seconds")),
        )
    wide_console().print(table)


def _number(param: str | None) -> str:
    """A logged param (a string) as the leaderboard shows numbers."""
    try:
        return fmt(float(param)) if param not in (None, "None") else "-"
    except ValueError:
        return param
