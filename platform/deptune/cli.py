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
        raise typer.Exit(2) from None


@app.command()
def train(spec: Annotated[Path, typer.Argument(help="a spec YAML (backbone, task, method, train, resources)")],
          overrides: SetOption = None,
          local: Annotated[bool, typer.Option("--local", help="run in this process, without Ray")] = False,
          address: Annotated[str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, "
                                                           "else a local Ray on 127.0.0.1)")] = None,
          workers: Annotated[int | None, typer.Option(min=1, help="override resources.workers")] = None,
          name: Annotated[str | None, typer.Option(help="Ray run name; an existing one in storage is resumed "
                                                        "(default: a new timestamped name)")] = None) -> None:
    """Run one DePT / PT training configuration on Ray Train (or --local) and print its metrics."""
    overrides = list(overrides or []) + ([f"resources.workers={workers}"] if workers else [])
    try:
        run_spec = load_spec(spec, overrides)
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    if local:
        from deptune.train.loop import train as run_training  # torch/transformers load only when needed
        result = run_training(run_spec)
    else:
        if not (address or os.environ.get("RAY_ADDRESS")):
            from deptune import local_ray
            local_ray.apply()  # before ray is imported
        from deptune.train.distributed import run_on_ray
        result = run_on_ray(run_spec, address, name)
    elapsed = time.perf_counter() - started
    where = "in-process" if local else f"Ray Train, {run_spec.resources.workers} worker(s)"
    typer.echo(f"\n{run_spec.method.name} on {run_spec.task.name} with {run_spec.backbone.name} ({where}): "
               f"{result.trainable_params:,} trainable parameters, {elapsed:.1f} s")
    typer.echo(f"best step {result.best_step}: validation "
               + ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items()))
    if result.test_metrics:
        typer.echo("test: " + ", ".join(f"{k}={v:.4f}" for k, v in result.test_metrics.items()))
    typer.echo(f"adapter: {result.adapter_dir}")


if __name__ == "__main__":
    app()
