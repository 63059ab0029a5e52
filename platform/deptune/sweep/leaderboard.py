"""The end of a sweep in the terminal: the study's best trials, its Pareto front, and where results are."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from deptune.sweep.study import trial_row


def ranked_rows(study: optuna.Study) -> list[dict]:
    """Completed trials best first, then pruned (by their last value), then failed."""
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    trials = study.get_trials(deepcopy=False)

    def key(t):
        if t.state == TrialState.COMPLETE:
            return (0, -sign * t.values[0])
        if t.state == TrialState.PRUNED and t.intermediate_values:
            return (1, -sign * t.intermediate_values[max(t.intermediate_values)])
        return (2, t.number)

    return [trial_row(t) for t in sorted(trials, key=key)]


def wide_console() -> Console:
    """The terminal's width, or 160 columns when output is a pipe or a job log (rich defaults to 80)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def render(study: optuna.Study, metrics: list[str], top: int = 10, console: Console | None = None) -> None:
    console = console or wide_console()
    rows = ranked_rows(study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    table = Table(title=f"study {study.study_name}: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n))
    for column in ("#", "exec", "state", "m", "r", *metrics, "lr_prompt", "lr_lowrank", "best step",
                   "trainable", "CPU-s", "GPU-s"):
        table.add_column(column, justify="right" if column not in ("state",) else "left")
    for row in rows[:top]:
        values = row["values"] or [None] * len(metrics)
        table.add_row(str(row["number"]), _fmt(row["execution"]), row["state"], _fmt(row["prompt_length"]),
                      _fmt(row["rank"]), *(_fmt(v) for v in values), _fmt(row["lr_prompt"]),
                      _fmt(row["lr_lowrank"]), _fmt(row["best_step"]), _fmt(row["trainable_params"]),
                      _fmt(row["cpu_seconds"]), _fmt(row["gpu_seconds"]))
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
        table.add_row(str(trial.number), _fmt(trial.user_attrs.get("prompt_length")),
                      _fmt(trial.user_attrs.get("rank")), *(_fmt(v) for v in trial.values))
    console.print(table)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)
