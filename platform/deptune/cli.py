"""`deptune validate | train | sweep | report | predict | promote | sync | mpt-source`: the command line (Typer)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from deptune.methods.config import is_registry_uri
from deptune.spec_base import SpecError, redact
from deptune.specs import load_run_spec, load_spec

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Hyperparameter search for Decomposed Prompt Tuning (DePT) on Ray."
)


@app.callback()
def _main() -> None:
    """Hyperparameter search for Decomposed Prompt Tuning (DePT) on Ray."""
    from deptune.spec_base import redact_logs

    redact_logs()  # no log line of this process shows a password, whoever logs it


SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a spec key: key.path=value")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Ray's, Tune's and MLflow's output on the console, not only in the log")
]


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="spec files")]) -> None:
    """Check spec files without starting Ray; exit 2 listing every error with its key path. Every file is
    checked, whatever an earlier one held."""
    from deptune import checks

    failed = False
    for path in files:
        try:
            spec = load_spec(path)
            checked = checks.check(spec, str(path))
            typer.echo(f"{path}: ok")
            for warning in [*getattr(spec, "warnings", list)(), *checked.warnings]:
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


def echo_warnings(warnings: list[str] | tuple[str, ...]) -> None:
    for warning in warnings:
        typer.echo(f"warning: {redact(warning)}", err=True)


def check_address(address: str | None) -> None:
    """An --address (or $RAY_ADDRESS) Ray cannot join is refused before anything is read or written."""
    from deptune.cluster.local import address_problem  # standard library only: no Ray imported

    if address and (problem := address_problem(address)):
        raise SpecError("--address", [f"--address: {problem}"])


def starts_local_ray(local: bool, address: str | None) -> bool:
    """A run on Ray with no cluster named (`--address`, $RAY_ADDRESS) starts one on this machine."""
    return not (local or address or os.environ.get("RAY_ADDRESS"))


def prepare_ray(address: str | None) -> None:
    """Before `import ray`: a local Ray must bind to 127.0.0.1 only (`deptune.cluster.local.apply`)."""
    if starts_local_ray(False, address):
        from deptune.cluster import local as local_ray

        local_ray.apply()


@contextmanager
def training_view(log: Path, verbose: bool, train, local: bool) -> Iterator:
    """One line per evaluation on the console, the rest in `log` (see `deptune.console`)."""
    from deptune.console import ExecutionOutput, TrainView

    output = ExecutionOutput(log, verbose)
    with output as console:
        output.keep()  # a training run is refused before this point or not at all
        with TrainView(console, train.steps, None if local else train.output_dir) as view:
            yield view


def where_it_ran(local: bool, workers: int) -> str:
    return "in-process" if local else f"Ray Train, {workers} worker(s)"


@app.command()
def train(
    spec: Annotated[Path, typer.Argument(help="a spec YAML (backbone, task, method, train, resources)")],
    overrides: SetOption = None,
    local: Annotated[bool, typer.Option("--local", help="run in this process, without Ray")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="override resources.workers")] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Ray run name; an existing one in storage is resumed (default: a new timestamped name)"),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run one DePT / PT training configuration on Ray Train (or --local) and print its metrics."""
    from deptune import checks

    overrides = list(overrides or []) + ([f"resources.workers={workers}"] if workers else [])
    address = None if local else address or os.environ.get("RAY_ADDRESS")
    with exit_on(SpecError, 2):
        check_address(address)
        run_spec, tracking_uri = load_run_spec(spec, overrides)  # a sweep spec trains its base run
        checked = checks.check(
            run_spec,
            str(spec),
            local_cluster=starts_local_ray(local, address),
            online=True,
            local=local,
            tracking_uri=tracking_uri,
        )
        if is_registry_uri(run_spec.method.init_from):  # a registered source adapter, fetched once all else passed
            from deptune.tracking.sources import localize_sources

            run_spec = localize_sources(run_spec, checked.tracking_uri, str(spec))
            checks.check_fetched_source(run_spec, str(spec))
    echo_warnings(checked.warnings)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from deptune.console import log_path

    log = log_path(run_spec.train.output_dir, "train", run_spec.method.name)
    typer.echo(
        f"{run_spec.method.name} on {run_spec.task.name}: {where_it_ran(local, run_spec.resources.workers)}; "
        f"Ray's and the libraries' output goes to {log}"
    )
    started = time.perf_counter()
    with exit_on(FloatingPointError, 1), training_view(log, verbose, run_spec.train, local) as view:
        if local:
            from deptune.train.loop import train as run_training  # torch/transformers load only when needed

            result = run_training(run_spec, reporter=view.report)
        else:
            prepare_ray(address)
            from deptune.cluster.trainer import run_on_ray

            result = run_on_ray(run_spec, address, name)
    if result.diverged_at_step is not None:
        typer.echo(f"training diverged: non-finite loss at step {result.diverged_at_step}", err=True)
        raise typer.Exit(1)
    elapsed = time.perf_counter() - started
    where = where_it_ran(local, run_spec.resources.workers)
    typer.echo(
        f"\n{run_spec.method.name} on {run_spec.task.name} with {run_spec.backbone.name} ({where}): "
        f"{result.trainable_params:,} trainable parameters, {elapsed:.1f} s"
    )
    typer.echo(
        f"best step {result.best_step}: validation " + ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items())
    )
    if result.test_metrics:
        typer.echo("test: " + ", ".join(f"{k}={v:.4f}" for k, v in result.test_metrics.items()))
    typer.echo(f"adapter: {result.adapter_dir}")
    typer.echo(f"log: {log}")


@app.command("mpt-source")
def mpt_source(
    spec: Annotated[
        Path,
        typer.Argument(
            help="a source spec YAML (backbone, source_tasks, method: mpt, teacher, train, distill, mixing, resources)"
        ),
    ],
    overrides: SetOption = None,
    local: Annotated[bool, typer.Option("--local", help="run in this process, without Ray")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="the stage's Ray run name; an earlier stage's name "
            "resumes it: finished teachers are kept, the rest "
            "continue from their checkpoints"
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """MPT's source stage on Ray Train (or --local): a PT teacher per source task, then P* and each task's
    (u, v) distilled on the task mixture; prints where the source adapter is."""
    from deptune import checks
    from deptune.train.spec import SourceSpec

    address = None if local else address or os.environ.get("RAY_ADDRESS")
    with exit_on(SpecError, 2):
        check_address(address)
        source_spec = load_spec(spec, overrides, kind=SourceSpec)
        checked = checks.check(
            source_spec, str(spec), local_cluster=starts_local_ray(local, address), local=local, online=True
        )
    echo_warnings(checked.warnings)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from deptune.console import log_path

    log = log_path(source_spec.train.output_dir, "mpt-source", "-".join(source_spec.task_names))
    typer.echo(
        f"MPT source stage on {', '.join(source_spec.task_names)}: Ray's and the libraries' output goes to {log}"
    )
    started = time.perf_counter()
    with exit_on(FloatingPointError, 1), training_view(log, verbose, source_spec.train, local) as view:
        if local:
            from deptune.train.multitask import train_source

            result = train_source(source_spec, reporter=view.report)
        else:
            prepare_ray(address)
            from deptune.cluster.trainer import run_source_on_ray

            result = run_source_on_ray(source_spec, address, name)
    where = where_it_ran(local, source_spec.resources.workers)
    typer.echo(
        f"\nMPT source stage on {', '.join(source_spec.task_names)} with {source_spec.backbone.name} "
        f"({where}): {time.perf_counter() - started:.1f} s"
    )
    typer.echo(
        f"best step {result.best_step}: validation " + ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items())
    )
    typer.echo("teachers: " + ", ".join(f"{task} {path}" for task, path in result.teacher_dirs.items()))
    typer.echo(f"source adapter: {result.adapter_dir}  (a target run: method.init_from={result.adapter_dir})")
    typer.echo(f"log: {log}")


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="a sweep spec YAML (search_spaces/*.yaml)")],
    overrides: SetOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="continue the study's last execution (its driver was killed) instead of starting one"
        ),
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    ] = None,
    top: Annotated[int, typer.Option(help="leaderboard rows")] = 10,
    verbose: VerboseOption = False,
) -> None:
    """Search m, r and the learning rates with Ray Tune + Optuna (+ ASHA); the study persists across runs."""
    from deptune import checks
    from deptune.sweep.config import SweepSpec

    address = address or os.environ.get("RAY_ADDRESS")
    with exit_on(SpecError, 2):
        check_address(address)
        sweep_spec = load_spec(spec, overrides, kind=SweepSpec)
        checked = checks.check(sweep_spec, str(spec), local_cluster=starts_local_ray(False, address), online=True)
    echo_warnings([*sweep_spec.warnings(), *checked.warnings])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_ray(address)
    from deptune.console import ExecutionOutput, SweepView, log_path
    from deptune.sweep.driver import SweepLocked, prepare_sweep, run_prepared
    from deptune.sweep.leaderboard import render, render_pareto
    from deptune.sweep.progress import listening

    study_name = sweep_spec.study.name or "deptune"
    log = log_path(sweep_spec.train.output_dir, "sweep", study_name)
    typer.echo(f"study {study_name}: {sweep_spec.sweep.trials} trial(s); Ray, Tune and MLflow log to {log}")
    started = time.perf_counter()
    output = ExecutionOutput(log, verbose)
    with exit_on(SpecError, 2), exit_on(SweepLocked, 3), output as console:
        objective = sweep_spec.sweep.objective
        view = SweepView(console, sweep_spec.sweep.trials, sweep_spec.train.steps, objective.mode, live=None)
        prepared = prepare_sweep(  # a models:/ source adapter is fetched once all else passed, then checked
            sweep_spec,
            str(spec),
            resume,
            address,
            checked.plan,
            checks.check_fetched_source,
            checked.tracking_uri,
            checked.study_url,
        )
        output.keep()  # nothing refused the sweep: its log is kept from here
        with view, listening(view):
            outcome = run_prepared(prepared, resume=resume, address=address)
    metrics = [o.metric for o in sweep_spec.sweep.objectives]
    if outcome.resumed_nothing:
        typer.echo(
            f"execution {outcome.execution.number} of study {outcome.study.study_name!r} already finished; "
            f"nothing to resume"
        )
    render(outcome.study, metrics, top)
    if outcome.pareto:
        render_pareto(outcome.pareto, metrics)
    typer.echo(
        f"\nexecution {outcome.execution.number} ({outcome.execution.name}) in {time.perf_counter() - started:.0f} s"
        f"\nstudy: {outcome.study.study_name} in {redact(checked.study_url)}"  # as given, its password masked
        f"\nRay Tune results: {outcome.experiment_path}"
    )
    best = _best_adapter(outcome.study)
    if best:
        typer.echo(f"best adapter: {best}")
    _echo_tracking(outcome.tracking, checked.tracking_uri)
    typer.echo(f"log: {log}")
    if outcome.interrupted:
        typer.echo("the execution was interrupted: continue it with --resume", err=True)
        raise typer.Exit(1)
    if outcome.tracking is not None and outcome.tracking.unfinished:
        raise typer.Exit(4)


def _echo_tracking(tracking, tracking_uri: str | None) -> None:
    if tracking is None:
        return
    if tracking_uri is not None:
        typer.echo(f"MLflow: {redact(tracking_uri)}, parent run {tracking.parent_run_id}")
        if tracking.view and tracking_uri.startswith(("http://", "https://")):  # a server: its UI is a link away
            typer.echo(f"trials, best first: {redact(tracking_uri).rstrip('/')}/{tracking.view}")
    if tracking.promotion is not None:
        p = tracking.promotion
        typer.echo(
            f"registered {p.uri}: "
            + (
                f"now models:/{p.model}@champion ({p.reason})"
                if p.champion
                else f"challenger, champion unchanged ({p.reason})"
            )
        )
    if tracking.not_logged:
        typer.echo("not yet in MLflow (kept in their journals; `deptune sync` sends them):", err=True)
        for line in tracking.not_logged:
            typer.echo(f"  {redact(line)}", err=True)
    if tracking.unfinished:
        typer.echo(redact(tracking.unfinished), err=True)


class Mode(str, Enum):
    """Whether a larger or a smaller value of the metric is better."""

    max = "max"
    min = "min"


def fail(lines: list[str], code: int = 2) -> NoReturn:
    """Each line said (secrets redacted) and exit `code`, no traceback."""
    for line in lines:
        typer.echo(redact(line), err=True)
    raise typer.Exit(code)


def reading_store(uri: str | None) -> str:
    """The tracking store a command reads (--uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db), checked
    before MLflow opens it: its form, that it is there (reading never creates one), and an answer within
    seconds; a password in the URI moves to MLflow's environment, out of every message (exit 2)."""
    from deptune.spec_base import split_credentials
    from deptune.tracking.store import check_store, resolve_uri

    resolved = resolve_uri(uri)
    try:
        check_store(resolved, "--uri", given=uri or os.environ.get("MLFLOW_TRACKING_URI"))
    except SpecError as exc:
        fail(exc.errors)
    plain, user, password = split_credentials(resolved)
    if password is not None and plain.startswith(("http://", "https://")):
        os.environ.update(MLFLOW_TRACKING_USERNAME=user or "", MLFLOW_TRACKING_PASSWORD=password)
        resolved = plain
    for name, value in READING_MLFLOW_ENV.items():
        os.environ.setdefault(name, value)
    return resolved


READING_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""A server that answered the check but stops answering fails in a minute, not after MLflow's 251 s."""


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """MLflow's errors as one redacted line: something that is not there (a run, a model, an experiment)
    is the user's input (exit 2); anything else (a server that broke mid-way) exit 1."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        missing = exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
        fail(
            [f"{what}: {str(exc.message).splitlines()[0][:300] if exc.message else exc.error_code}"],
            2 if missing else 1,
        )
    except (OSError, ValueError) as exc:  # requests' errors are OSErrors; a version that is no model
        fail([f"{what}: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}"], 1)


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="MLflow experiment (a sweep's study name)")],
    uri: Annotated[
        str | None, typer.Option(help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    ] = None,
    metric: Annotated[str, typer.Option(help="rank trials by this metric's best value")] = "objective",
    mode: Annotated[Mode, typer.Option(help="whether larger or smaller is better")] = Mode.max,
    top: Annotated[int, typer.Option(min=1, help="rows")] = 20,
) -> None:
    """Print an experiment's trials from MLflow, best first."""
    tracking_uri = reading_store(uri)
    from deptune.registry.report import render_experiment

    with mlflow_errors(f"experiment {experiment!r}"):
        try:
            render_experiment(tracking_uri, experiment, metric, mode.value, top)
        except LookupError as exc:
            fail([str(exc)])


@app.command()
def predict(
    model_uri: Annotated[str, typer.Argument(help="e.g. models:/deptune-rte-dept@champion, or a model folder")],
    text: Annotated[
        list[str] | None, typer.Option("--text", help="a text of the task's first column (repeat for several rows)")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="COLUMN=TEXT, one per text column of the task (e.g. --input sentence1=... "
            "--input sentence2=...); repeat a column for more rows",
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            readable=True,
            help="a .csv/.tsv/.jsonl file of rows with the task's columns",
        ),
    ] = None,
    uri: Annotated[str | None, typer.Option(help="tracking URI")] = None,
) -> None:
    """Predict labels with a registered adapter, loaded once for every row: prints the class name, the
    verbalised label and the row's texts, tab-separated."""
    from deptune.registry.predict import (
        InputError,
        check_columns,
        model_columns,
        needs_store,
        rows_from_file,
        rows_from_options,
    )

    if file is not None and (text or inputs):
        fail(["give rows either as --text/--input or as --file, not both"])
    try:
        from_file = rows_from_file(file) if file is not None else None  # the file's problems first: no model needed
    except InputError as exc:
        fail([str(exc)])
    tracking_uri = reading_store(uri) if needs_store(model_uri) else None
    with mlflow_errors(f"model {model_uri}"):
        try:
            columns = model_columns(model_uri, tracking_uri)
            rows = from_file if from_file is not None else rows_from_options(columns, text or [], inputs or [])
            check_columns(rows, columns)
        except InputError as exc:
            fail([str(exc)])
        from deptune.registry.predict import Predictor

        result = Predictor.load(model_uri, tracking_uri).predict(rows)
    for row in result.to_dict("records"):
        typer.echo("\t".join([str(row["label_name"]), str(row["label"]), *(str(row[c]) for c in columns)]))


@app.command()
def promote(
    run_id: Annotated[str, typer.Argument(help="an MLflow run holding an `adapter` artifact")],
    model: Annotated[str, typer.Option(help="registered model name")],
    metric: Annotated[str, typer.Option(help="compare champions on this metric's best value")] = "objective",
    mode: Annotated[Mode, typer.Option(help="whether larger or smaller is better")] = Mode.max,
    uri: Annotated[str | None, typer.Option(help="tracking URI")] = None,
    lock_url: Annotated[
        str | None,
        typer.Option(
            help="database holding the promotion lock (default: $DEPTUNE_LOCK_URL, else a lock on this machine)"
        ),
    ] = None,
) -> None:
    """Register a run's adapter as a new model version; `champion` moves only if it is better."""
    tracking_uri = reading_store(uri)
    from deptune.registry.promotion import promotable
    from deptune.registry.promotion import promote as promote_run

    with mlflow_errors(f"run {run_id}"):
        if problem := promotable(run_id, metric, mode.value, tracking_uri):  # nothing registered before this
            fail([problem])
        result = promote_run(run_id, model, metric, mode.value, tracking_uri, lock_url)
    typer.echo(f"registered {result.uri}: " + ("champion" if result.champion else "challenger") + f" ({result.reason})")


@app.command()
def sync(
    location: Annotated[
        str,
        typer.Argument(
            help="a journal folder a sweep named (<output_dir>/mlflow-journal/"
            "<execution>, or the trials' journals on its storage)"
        ),
    ],
    uri: Annotated[str | None, typer.Option(help="tracking URI")] = None,
) -> None:
    """Send MLflow writes a sweep kept while the tracking server was away; for an execution whose end
    waited for the server, register its best adapter and write its leaderboard, as the sweep would have."""
    from deptune.sweep.tracker import finish_unfinished
    from deptune.tracking.journal import flush_all, journals

    if "://" not in location and not Path(location).is_dir():
        fail([f"{location}: no such folder"])
    if not journals(location):
        fail([f"{location}: holds no journal (a folder per run, each with its ops/)"])
    left = flush_all(location, reading_store(uri))
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
