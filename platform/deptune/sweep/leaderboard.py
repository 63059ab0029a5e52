"""The end of a sweep in the terminal: the study's best trials, its Pareto front, and where results are."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from deptune.sweep.study import SHOWN_APART, searched_params, trial_row
from deptune.tracking.tables import fmt, wide_console


def ranked_rows(study: optuna.Study, metrics: list[str] | None = None) -> list[dict]:
    """Completed trials best first, then pruned (by their best value before the stop), then failed; one
    column per objective, named after its metric."""
    metrics = metrics or ["objective", *(f"objective_{i + 1}" for i in range(1, len(study.directions)))]
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    trials = study.get_trials(deepcopy=False)

    def key(t):
        if t.state == TrialState.COMPLETE:
            return (0, -sign * t.values[0])
        if t.state == TrialState.PRUNED and t.intermediate_values:
            return (1, -sign * (max if sign > 0 else min)(t.intermediate_values.values()))
        return (2, t.number)

    params = searched_params(trials)
    return [trial_row(t, metrics, sign > 0, params) for t in sorted(trials, key=key)]


def render(study: optuna.Study, metrics: list[str], top: int = 10, console: Console | None = None) -> None:
    console = console or wide_console()
    rows = ranked_rows(study, metrics)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    runners = sorted({r["runner"] for r in rows if r.get("runner")})
    table = Table(
        title=f"study {study.study_name}: "
        + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
        + (f" (runner: {', '.join(runners)})" if runners else "")
    )
    fixed = {"number", "state", "execution", "runner", *SHOWN_APART, *metrics}
    searched = [k for k in searched_params(study.get_trials()) if k not in fixed]  # learning rates, a method's own
    gpus = any(r.get("gpu_seconds") for r in rows)
    for column in (
        "#",
        "exec",
        "state",
        "m",
        "r",
        *metrics,
        *searched,
        "best step",
        "trainable",
        "CPU-s",
        *(["GPU-s"] if gpus else []),
    ):
        table.add_column(column, justify="right" if column not in ("state",) else "left")
    for row in rows[:top]:
        table.add_row(
            str(row["number"]),
            fmt(row["execution"]),
            row["state"],
            fmt(row["prompt_length"]),
            fmt(row["rank"]),
            *(fmt(row[m]) for m in metrics),
            *(fmt(row.get(k)) for k in searched),
            fmt(row["best_step"]),
            fmt(row["trainable_params"]),
            fmt(row["cpu_seconds"]),
            *([fmt(row.get("gpu_seconds"))] if gpus else []),
        )
    console.print(table)
    failed = [r for r in rows if r["state"] == "FAIL"]
    for row in failed[:5]:
        console.print(f"trial {row['number']} failed: {row['reason']}")


def render_pareto(front: list[optuna.trial.FrozenTrial], metrics: list[str], console: Console | None = None) -> None:
    console = console or wide_console()
    table = Table(title=f"Pareto front ({len(front)} trials)")
    for column in ("#", "m", "r", *metrics):
        table.add_column(column, justify="right")
    for trial in sorted(front, key=lambda t: t.values[0]):
        table.add_row(
            str(trial.number),
            fmt(trial.user_attrs.get("prompt_length")),
            fmt(trial.user_attrs.get("rank")),
            *(fmt(v) for v in trial.values),
        )
    console.print(table)
