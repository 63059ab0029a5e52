"""`deptune validate | train | sweep | report | predict | promote | sync | mpt-source`: the command line (Typer)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from deptune.methods.config import is_registry_uri
from deptune.spec_base import SpecError, redact
from deptune.specs import load_run_spec, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hyperparameter search for Decomposed Prompt Tuning (DePT) on Ray.")

@app.callback()
def _main() -> None:
    """Hyperparameter search for Decomposed Prompt Tuning (DePT) on Ray."""
    from deptune.spec_base import redact_logs
    redact_logs()  # no log line of this process shows a password, whoever logs it


SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a spec key: key.path=value")]


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="spec files")]) -> None:
    """Check spec files without starting Ray; exit 2 listing every error with its key path. Every file is
    checked, whatever an earlier one held."""
    from deptune import checks
    failed = False
    for path in files:
        try:
            spec = load_spec(path)
            checks.check(spec, str(path))
            typer.echo(f"{path}: ok")
            for warning in getattr(spec, "warnings", list)():
                typer.echo(f"{path}: warning: {redact(warning)}", err=True)
        except SpecError as exc:
            failed = True
            typer.echo(redact(str(exc)), err=True)
        except OSError as exc:  # a data file the checks read vanished or is unreadable
            failed = True
            typer.echo(f"{path}: 1 error(s)\n  <file>: {redact(str(exc))}", err=True)
    if failed:
        raise typer.Exit(2) from None


@contextmanager
def exit_on(error: type[Exception], code: int) -> Iterator[None]:
    """`error` said in one line (secrets redacted) and exit `code`, no traceback: a spec's problems (2,
    before any cluster time is spent) or a diverged run (1: retrying would diverge again)."""
    try:
        yield
    except error as exc:
        typer.echo(redact(str(exc)), err=True)
        raise typer.Exit(code) from None


def starts_local_ray(local: bool, address: str | None) -> bool:
    """A run on Ray with no cluster named (`--address`, $RAY_ADDRESS) starts one on this machine."""
    return not (local or address or os.environ.get("RAY_ADDRESS"))


def prepare_ray(address: str | None) -> None:
    """Before `import ray`: a local Ray must bind to 127.0.0.1 only (`deptune.cluster.local.apply`)."""
    if starts_local_ray(False, address):
        from deptune.cluster import local as local_ray
        local_ray.apply()


def where_it_ran(local: bool, workers: int) -> str:
    return "in-process" if local else f"Ray Train, {workers} worker(s)"


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
    from deptune import checks
    overrides = list(overrides or []) + ([f"resources.workers={workers}"] if workers else [])
    with exit_on(SpecError, 2):
        run_spec, tracking_uri = load_run_spec(spec, overrides)  # a sweep spec trains its base run
        if is_registry_uri(run_spec.method.init_from):  # a registered source adapter
            from deptune.tracking.sources import localize_sources
            from deptune.tracking.store import resolve_uri
            run_spec = localize_sources(run_spec, resolve_uri(tracking_uri), str(spec))
        checks.check(run_spec, str(spec), local_cluster=starts_local_ray(local, address), online=True, local=local)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    if local:
        from deptune.train.loop import train as run_training  # torch/transformers load only when needed
        result = run_training(run_spec)
        if result.diverged_at_step is not None:
            typer.echo(f"training diverged: non-finite loss at step {result.diverged_at_step}", err=True)
            raise typer.Exit(1)
    else:
        prepare_ray(address)
        from deptune.cluster.trainer import run_on_ray
        with exit_on(FloatingPointError, 1):
            result = run_on_ray(run_spec, address, name)
    elapsed = time.perf_counter() - started
    where = where_it_ran(local, run_spec.resources.workers)
    typer.echo(f"\n{run_spec.method.name} on {run_spec.task.name} with {run_spec.backbone.name} ({where}): "
               f"{result.trainable_params:,} trainable parameters, {elapsed:.1f} s")
    typer.echo(f"best step {result.best_step}: validation "
               + ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items()))
    if result.test_metrics:
        typer.echo("test: " + ", ".join(f"{k}={v:.4f}" for k, v in result.test_metrics.items()))
    typer.echo(f"adapter: {result.adapter_dir}")


@app.command("mpt-source")
def mpt_source(spec: Annotated[Path, typer.Argument(help="a source spec YAML (backbone, source_tasks, method: mpt, "
                                                        "teacher, train, distill, mixing, resources)")],
               overrides: SetOption = None,
               local: Annotated[bool, typer.Option("--local", help="run in this process, without Ray")] = False,
               address: Annotated[str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, "
                                                                "else a local Ray on 127.0.0.1)")] = None,
               name: Annotated[str | None, typer.Option(help="the stage's Ray run name; an earlier stage's name "
                                                             "resumes it: finished teachers are kept, the rest "
                                                             "continue from their checkpoints")] = None) -> None:
    """MPT's source stage on Ray Train (or --local): a PT teacher per source task, then P* and each task's
    (u, v) distilled on the task mixture; prints where the source adapter is."""
    from deptune import checks
    from deptune.train.spec import SourceSpec
    with exit_on(SpecError, 2):
        source_spec = load_spec(spec, overrides, kind=SourceSpec)
        checks.check(source_spec, str(spec), local_cluster=starts_local_ray(local, address), local=local)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    with exit_on(FloatingPointError, 1):
        if local:
            from deptune.train.multitask import train_source
            result = train_source(source_spec)
        else:
            prepare_ray(address)
            from deptune.cluster.trainer import run_source_on_ray
            result = run_source_on_ray(source_spec, address, name)
    where = where_it_ran(local, source_spec.resources.workers)
    typer.echo(f"\nMPT source stage on {', '.join(source_spec.task_names)} with {source_spec.backbone.name} "
               f"({where}): {time.perf_counter() - started:.1f} s")
    typer.echo(f"best step {result.best_step}: validation "
               + ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items()))
    typer.echo("teachers: " + ", ".join(f"{task} {path}" for task, path in result.teacher_dirs.items()))
    typer.echo(f"source adapter: {result.adapter_dir}  (a target run: method.init_from={result.adapter_dir})")


@app.command()
def sweep(spec: Annotated[Path, typer.Argument(help="a sweep spec YAML (search_spaces/*.yaml)")],
          overrides: SetOption = None,
          resume: Annotated[bool, typer.Option("--resume", help="continue the study's last execution (its "
                                                                "driver was killed) instead of starting one")] = False,
          address: Annotated[str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, "
                                                           "else a local Ray on 127.0.0.1)")] = None,
          top: Annotated[int, typer.Option(help="leaderboard rows")] = 10) -> None:
    """Search m, r and the learning rates with Ray Tune + Optuna (+ ASHA); the study persists across runs."""
    from deptune import checks
    from deptune.sweep.config import SweepSpec
    from deptune.tracking.sources import localize_sources
    from deptune.tracking.store import resolve_uri
    address = address or os.environ.get("RAY_ADDRESS")
    with exit_on(SpecError, 2):
        sweep_spec = load_spec(spec, overrides, kind=SweepSpec)
        sweep_spec = localize_sources(sweep_spec, resolve_uri(sweep_spec.tracking.uri), str(spec))
        checked = checks.check(sweep_spec, str(spec), local_cluster=starts_local_ray(False, address), online=True)
    for warning in sweep_spec.warnings():
        typer.echo(f"warning: {redact(warning)}", err=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_ray(address)
    from deptune.sweep.driver import SweepLocked, run_sweep
    from deptune.sweep.leaderboard import render, render_pareto
    started = time.perf_counter()
    try:
        outcome = run_sweep(sweep_spec, str(spec), resume=resume, address=address, plan=checked.plan)
    except SpecError as exc:
        typer.echo(redact(str(exc)), err=True)
        raise typer.Exit(2) from None
    except SweepLocked as exc:
        typer.echo(redact(str(exc)), err=True)
        raise typer.Exit(3) from None
    metrics = [o.metric for o in sweep_spec.sweep.objectives]
    if outcome.resumed_nothing:
        typer.echo(f"execution {outcome.execution.number} of study {outcome.study.study_name!r} already finished; "
                   f"nothing to resume")
    render(outcome.study, metrics, top)
    if outcome.pareto:
        render_pareto(outcome.pareto, metrics)
    from deptune.sweep.study import storage_url
    typer.echo(f"\nexecution {outcome.execution.number} ({outcome.execution.name}) in {time.perf_counter() - started:.0f} s"
               f"\nstudy: {outcome.study.study_name} in {redact(storage_url(sweep_spec))}"
               f"\nRay Tune results: {outcome.experiment_path}")
    best = _best_adapter(outcome.study)
    if best:
        typer.echo(f"best adapter: {best}")
    _echo_tracking(outcome.tracking, sweep_spec)
    if outcome.interrupted:
        typer.echo("the execution was interrupted: continue it with --resume", err=True)
        raise typer.Exit(1)
    if outcome.tracking is not None and outcome.tracking.unfinished:
        raise typer.Exit(4)


def _echo_tracking(tracking, spec) -> None:
    if tracking is None:
        return
    from deptune.tracking.store import resolve_uri
    if spec is not None:
        typer.echo(f"MLflow: {redact(resolve_uri(spec.tracking.uri))}, parent run {tracking.parent_run_id}")
    if tracking.promotion is not None:
        p = tracking.promotion
        typer.echo(f"registered {p.uri}: " + (f"now models:/{p.model}@champion ({p.reason})" if p.champion
                                              else f"challenger, champion unchanged ({p.reason})"))
    if tracking.not_logged:
        typer.echo("not yet in MLflow (kept in their journals; `deptune sync` sends them):", err=True)
        for line in tracking.not_logged:
            typer.echo(f"  {redact(line)}", err=True)
    if tracking.unfinished:
        typer.echo(redact(tracking.unfinished), err=True)


@app.command()
def report(experiment: Annotated[str, typer.Argument(help="MLflow experiment (a sweep's study name)")],
           uri: Annotated[str | None, typer.Option(help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                                        "sqlite:///mlflow.db)")] = None,
           metric: Annotated[str, typer.Option(help="rank trials by this metric's best value")] = "objective",
           mode: Annotated[str, typer.Option(help="max or min")] = "max",
           top: Annotated[int, typer.Option(help="rows")] = 20) -> None:
    """Print an experiment's trials from MLflow, best first."""
    from deptune.registry.report import render_experiment
    from deptune.tracking.store import resolve_uri
    try:
        render_experiment(resolve_uri(uri), experiment, metric, mode, top)
    except LookupError as exc:
        typer.echo(redact(str(exc)), err=True)
        raise typer.Exit(2) from None


@app.command()
def predict(model_uri: Annotated[str, typer.Argument(help="e.g. models:/deptune-rte-dept@champion")],
            text: Annotated[list[str] | None, typer.Option(
                "--text", help="a text of the task's first column (repeat for several rows)")] = None,
            inputs: Annotated[list[str] | None, typer.Option(
                "--input", help="COLUMN=TEXT, one per text column of the task (e.g. --input sentence1=... "
                                "--input sentence2=...); repeat a column for more rows")] = None,
            file: Annotated[Path | None, typer.Option(
                "--file", help="a .csv/.tsv/.jsonl file of rows with the task's columns")] = None,
            uri: Annotated[str | None, typer.Option(help="tracking URI")] = None) -> None:
    """Predict labels with a registered adapter, loaded once for every row: prints the class name, the
    verbalised label and the row's texts, tab-separated."""
    from deptune.registry.predict import (InputError, Predictor, check_columns, model_columns, rows_from_file,
                                          rows_from_options)
    from deptune.tracking.store import resolve_uri
    if file is not None and (text or inputs):
        typer.echo("give rows either as --text/--input or as --file, not both", err=True)
        raise typer.Exit(2)
    tracking_uri = resolve_uri(uri)
    try:
        columns = model_columns(model_uri, tracking_uri)
        rows = rows_from_file(file) if file is not None else rows_from_options(columns, text or [], inputs or [])
        check_columns(rows, columns)
    except (InputError, OSError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    result = Predictor.load(model_uri, tracking_uri).predict(rows)
    for row in result.to_dict("records"):
        typer.echo("\t".join([str(row["label_name"]), str(row["label"]), *(str(row[c]) for c in columns)]))


@app.command()
def promote(run_id: Annotated[str, typer.Argument(help="an MLflow run holding an `adapter` artifact")],
            model: Annotated[str, typer.Option(help="registered model name")],
            metric: Annotated[str, typer.Option(help="compare champions on this metric's best value")] = "objective",
            mode: Annotated[str, typer.Option(help="max or min")] = "max",
            uri: Annotated[str | None, typer.Option(help="tracking URI")] = None,
            lock_url: Annotated[str | None, typer.Option(help="database holding the promotion lock (default: "
                                                              "$DEPTUNE_LOCK_URL, else a lock on this machine)")] = None
            ) -> None:
    """Register a run's adapter as a new model version; `champion` moves only if it is better."""
    from deptune.registry.promotion import promote as promote_run
    from deptune.tracking.store import resolve_uri
    result = promote_run(run_id, model, metric, mode, resolve_uri(uri), lock_url)
    typer.echo(f"registered {result.uri}: " + ("champion" if result.champion else "challenger")
               + f" ({result.reason})")


@app.command()
def sync(location: Annotated[str, typer.Argument(help="a journal folder a sweep named (<output_dir>/mlflow-journal/"
                                                      "<execution>, or the trials' journals on its storage)")],
         uri: Annotated[str | None, typer.Option(help="tracking URI")] = None) -> None:
    """Send MLflow writes a sweep kept while the tracking server was away; for an execution whose end
    waited for the server, register its best adapter and write its leaderboard, as the sweep would have."""
    from deptune.sweep.tracker import finish_unfinished
    from deptune.tracking.journal import flush_all
    from deptune.tracking.store import resolve_uri
    left = flush_all(location, resolve_uri(uri))
    finished = finish_unfinished(Path(location)) if "://" not in location else None
    if finished is not None:
        left = finished.not_logged
        _echo_tracking(finished, None)
    for line in left:
        typer.echo(redact(line), err=True)
    typer.echo("all journals sent" if not left else f"{len(left)} journal(s) still hold writes")
    if left or (finished is not None and finished.unfinished):
        raise typer.Exit(1)


def _best_adapter(study) -> str | None:
    try:
        return study.best_trials[0].user_attrs.get("adapter_path") if study.best_trials else None
    except ValueError:
        return None


if __name__ == "__main__":
    app()
