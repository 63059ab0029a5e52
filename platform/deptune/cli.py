"""`deptune validate | train`: the command line (Typer)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from deptune.config import SpecError, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hyperparameter search for Decomposed Prompt Tuning (DePT) on Ray.")

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a spec key: key.path=value")]


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="spec files")]) -> None:
    """Check spec files without running anything; exit 2 listing every error with its key path."""
    failed = False
    for path in files:
        try:
            load_spec(path)
            typer.echo(f"{path}: ok")
        except SpecError as exc:
            failed = True
            typer.echo(str(exc), err=True)
    if failed:
        raise typer.Exit(2)


@app.command()
def train(spec: Annotated[Path, typer.Argument(help="a spec YAML (backbone, task, method, train)")],
          overrides: SetOption = None) -> None:
    """Run one DePT / PT training configuration in this process and print its metrics."""
    try:
        run_spec = load_spec(spec, overrides or [])
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from deptune.train.loop import train as run_training  # torch/transformers load only when needed

    started = time.perf_counter()
    result = run_training(run_spec)
    elapsed = time.perf_counter() - started
    typer.echo(f"\n{run_spec.method.name} on {run_spec.task.name} with {run_spec.backbone.name}: "
               f"{result.trainable_params:,} trainable parameters, {elapsed:.1f} s")
    typer.echo(f"best step {result.best_step}: validation "
               + ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items()))
    if result.test_metrics:
        typer.echo("test: " + ", ".join(f"{k}={v:.4f}" for k, v in result.test_metrics.items()))
    typer.echo(f"adapter: {result.adapter_dir}")


if __name__ == "__main__":
    app()
