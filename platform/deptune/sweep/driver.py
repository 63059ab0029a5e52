"""`deptune sweep`: check the spec, open the study, then run (or resume) one execution on Ray Tune.

Order matters: every check that can fail without a cluster (spec, files, budget, study storage, this
machine's size) runs before Ray starts, and the cluster's size is checked before any trial starts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from ray import tune

from deptune import locks
from deptune.backbones import hidden_size, model_config
from deptune.cluster import local as local_ray
from deptune.cluster.fit import check_fits, run_demand
from deptune.cluster.local import connect
from deptune.cluster.paths import Shipment, travel
from deptune.methods.catalog import snapshot
from deptune.methods.config import is_registry_uri
from deptune.registry.promotion import LOCK_ENV
from deptune.spec_base import SpecError, absolute_paths, redact, split_credentials
from deptune.storage import Folder, join, ray_storage
from deptune.sweep.config import SweepSpec
from deptune.sweep.progress import SweepProgress
from deptune.sweep.retention import CheckpointRetention, clean_up
from deptune.sweep.searcher import StudyEvents, StudySearcher
from deptune.sweep.space import SearchPlan, plan_search
from deptune.sweep.study import (
    Execution,
    close_orphans,
    last_execution,
    load_study,
    open_storage,
    pareto_front,
    resume_problem,
    start_execution,
    storage_url,
)
from deptune.sweep.tracker import OpeningTracker, SweepOutcomeTracking, SweepTracker, trial_journals_for
from deptune.sweep.trainable import train_trial
from deptune.tracking.catalog import tracker_class
from deptune.tracking.sources import localize_sources
from deptune.tracking.trial import PublishedTracking, TrialTracking

log = logging.getLogger(__name__)
UNFINISHED = {"PENDING", "RUNNING", "PAUSED"}


@dataclass
class SweepOutcome:
    study: optuna.Study
    execution: Execution
    experiment_path: str
    interrupted: bool
    errors: int
    resumed_nothing: bool = False  # --resume found the execution already finished
    tracking: SweepOutcomeTracking | None = None  # MLflow: parent run, registered version, what was not logged

    @property
    def pareto(self) -> list[FrozenTrial]:
        return pareto_front(self.study)


@dataclass(frozen=True)
class PreparedSweep:
    """A sweep spec made ready once, before Ray, and passed down as it is: its paths absolute, a `models:/`
    source adapter fetched, secrets moved out of its URLs, the tracking URI and study URL resolved, its search
    plan made. Nothing below resolves any of them again."""

    spec: SweepSpec
    source: str  # the spec file, for error messages
    plan: SearchPlan
    tracking_uri: str
    study_url: str


def prepare_sweep(
    spec: SweepSpec,
    source: str = "<spec>",
    resume: bool = False,
    address: str | None = None,
    plan: SearchPlan | None = None,
    fetched: Callable[[SweepSpec, str], None] | None = None,
    tracking_uri: str | None = None,
    study_url: str | None = None,
) -> PreparedSweep:
    """`plan`, `tracking_uri`, `study_url`: what `deptune.checks` worked out (worked out here otherwise);
    `fetched`: checks a fetched source adapter (the CLI's `checks.check_fetched_source`, which lives above
    this layer). What refuses the sweep (`refuse_before_writing`) refuses it before anything is fetched or
    written."""
    # MLflow prints each run's URL, userinfo (a password) included, on stdout: not in a sweep's output
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    spec = absolute_paths(spec, Path.cwd())
    tracker = tracker_class(spec.tracking.tracker)
    tracking_uri, study_url = tracking_uri or tracker.resolve_uri(spec.tracking.uri), study_url or storage_url(spec)
    refuse_before_writing(spec, source, resume, address, study_url)
    if is_registry_uri(spec.method.init_from):
        spec = localize_sources(spec, tracking_uri, source)
        if fetched is not None:
            fetched(spec, source)
    spec, tracking_uri, study_url = credentials_to_env(spec, tracking_uri, study_url)
    if plan is None:
        d = hidden_size(spec.backbone) or hidden_size(spec.backbone, model_config(spec.backbone, online=True))
        if d is None:
            raise SpecError(source, [f"backbone.name: cannot read the hidden size of {spec.backbone.name!r}"])
        plan, errors = plan_search(spec, d)
        if errors:
            raise SpecError(source, errors)
    tracker.check_reachable(tracking_uri, source)
    return PreparedSweep(spec, source, plan, tracking_uri, study_url)


def credentials_to_env(spec: SweepSpec, tracking_uri: str, study_url: str) -> tuple[SweepSpec, str, str]:
    """The spec, tracking URI and study URL with passwords moved out of the URLs into this process's
    environment, where MLflow (MLFLOW_TRACKING_USERNAME / _PASSWORD) and libpq (PGPASSWORD) read them: what
    the driver then hands on (Tune's pickled searcher and tuner state, trial arguments, journals, MLflow's
    printed run URLs) holds no secret. A local Ray inherits the environment; on a cluster the nodes need the
    tracking credentials in theirs (deploy/: from Secrets). Only PostgreSQL study URLs are split (other
    dialects have no such variable)."""
    update = {}
    bare_uri, user, password = split_credentials(tracking_uri)
    if password is not None and bare_uri.startswith(("http://", "https://")):
        os.environ.update(MLFLOW_TRACKING_USERNAME=user or "", MLFLOW_TRACKING_PASSWORD=password)
        update["tracking"] = spec.tracking.model_copy(update={"uri": bare_uri})
        tracking_uri = bare_uri
    bare_url, _, password = split_credentials(study_url)
    if password is not None and bare_url.startswith("postgresql"):
        os.environ["PGPASSWORD"] = password
        update["study"] = spec.study.model_copy(update={"storage": bare_url})
        study_url = bare_url
    return (spec.model_copy(update=update) if update else spec), tracking_uri, study_url


class SweepLocked(RuntimeError):
    """Another execution of the same study is running (a scheduled sweep fired while the last one runs)."""


def refuse_before_writing(spec: SweepSpec, source: str, resume: bool, address: str | None, study_url: str) -> None:
    """What refuses the sweep before anything is written (a study database, a study, a fetched source
    adapter): an address Ray cannot join, a `--resume` with no execution to continue."""
    if address and (problem := local_ray.address_problem(address)):
        raise SpecError(source, [f"--address: {problem}"])
    if resume and (problem := resume_problem(study_url, spec.study.name or "deptune")):
        raise SpecError(source, [f"--resume: {problem}; run without --resume to start an execution"])


def run_sweep(
    spec: SweepSpec,
    source: str = "<spec>",
    resume: bool = False,
    address: str | None = None,
    plan: SearchPlan | None = None,
) -> SweepOutcome:
    """Prepare the spec (`prepare_sweep`), then run one execution of its study (`run_prepared`)."""
    address = address or os.environ.get("RAY_ADDRESS")
    return run_prepared(prepare_sweep(spec, source, resume, address, plan), resume, address)


def run_prepared(prepared: PreparedSweep, resume: bool = False, address: str | None = None) -> SweepOutcome:
    """One execution of the spec's study, under the study's lock: two executions never run at once."""
    for key, value in local_ray.TRAIN_ENV.items():  # before Ray starts: trial actors inherit the environment
        os.environ.setdefault(key, value)
    storage_db = open_storage(prepared.study_url, prepared.source)
    study = load_study(prepared.spec, storage_db)
    lock_url = os.environ.get(LOCK_ENV) or prepared.study_url
    try:
        with locks.exclusive(f"sweep:{study.study_name}", lock_url):
            return _run_execution(prepared, resume, address, storage_db, study)
    except locks.LockHeld:
        raise SweepLocked(
            f"another execution of study {study.study_name!r} is running (its lock is held in "
            f"{redact(lock_url)}); this one did not start"
        ) from None


def _run_execution(
    prepared: PreparedSweep, resume: bool, address: str | None, storage_db: RDBStorage, study: optuna.Study
) -> SweepOutcome:
    spec, source, plan = prepared.spec, prepared.source, prepared.plan
    storage = spec.train.ray_storage()
    execution = last_execution(spec, study) if resume else None
    if execution is not None and _execution_done(storage, execution.name, spec):
        return SweepOutcome(
            study=study,
            execution=execution,
            experiment_path=join(storage, execution.name),
            interrupted=False,
            errors=0,
            resumed_nothing=True,
        )
    started = connect(address)
    sigterm = _GracefulStop()  # after connect(): Ray's own SIGTERM handler, installed by ray.init, would win
    tracker = opening = None
    try:
        try:
            check_fits(spec.base_run(), spec.sweep.driver_cpus)
        except ValueError as exc:
            raise SpecError(source, [str(exc)]) from None
        trials = Trials(*travel(spec, source))  # the driver's local paths: each reaches every trial, or fails here
        if execution is None:
            execution = start_execution(spec, study)
            for point in spec.sweep.enqueue:
                study.enqueue_trial(point, skip_if_exists=True)
        if resume:
            tracker = SweepTracker(spec, prepared.tracking_uri, execution, study, plan, prepared.study_url)
            tracker.open_parent(source)
            tuner = _restored_tuner(spec, execution, storage, trials, tracker.trial_tracking())
        else:  # MLflow opens while Tune starts the first trial actors (see OpeningTracker)
            opening = OpeningTracker(
                spec,
                prepared.tracking_uri,
                execution,
                study,
                plan,
                source,
                PublishedTracking(storage, f"{execution.name}-tracking.json"),
                prepared.study_url,
            )
            tuner = _new_tuner(prepared, study, execution, storage, trials, opening)
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # experiment state for --resume stays fresh
        # a trial that fails before its first evaluation must be recorded as failed, not stop the sweep
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        sigterm.fitting = True
        try:
            results = tuner.fit()
        finally:
            sigterm.fitting = False
        if not resume:
            tracker = opening.get()
        path = join(storage, execution.name)
        interrupted = bool(_unfinished_trials(storage, execution.name))
        if not interrupted:
            close_orphans(study, storage_db, execution, "the trial did not finish before its execution ended")
            if spec.resources.resolved_runner == "tune":  # Ray Train runs keep their own
                clean_up(path, best_adapters(study, execution))
        return SweepOutcome(
            study=study,
            execution=execution,
            experiment_path=path,
            interrupted=interrupted,
            errors=len(results.errors),
            tracking=tracker.finish(interrupted),
        )
    finally:
        for opened in (tracker, opening):  # its sender thread, if the sweep ended before `finish` stopped it
            if opened is not None:
                opened.stop_sending()
        sigterm.restore()
        if started:
            import ray

            ray.shutdown()


def best_adapters(study: optuna.Study, execution: Execution) -> set[str]:
    return {
        t.user_attrs["adapter_path"]
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("execution") == execution.number and "adapter_path" in t.user_attrs
    }


class _GracefulStop:
    """SIGTERM (`ray job stop`, Kubernetes) while the trials run stops the sweep the way Ctrl+C stops Tune:
    trials stopped, experiment state saved, the execution returned as interrupted (parent run KILLED, the
    CLI exits 1 with the `--resume` hint). Tune's SIGINT handler cannot do it in a Ray job (Ray blocks SIGINT
    in job drivers); Tune installs the same handler for SIGUSR1 during `tuner.fit()`, which this calls.
    Outside `fit()`, or on a second SIGTERM, exit at once through the `finally` blocks (Ray shut down, the
    study lock released). Ray SIGKILLs the job after `RAY_JOB_STOP_WAIT_TIME_S` (3 s by default)."""

    def __init__(self) -> None:
        self.fitting = self.received = self.installed = False
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self.installed = True

    def _on_sigterm(self, signum, frame) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if self.received or not self.fitting or not callable(tune_stop):
            raise SystemExit(128 + signum)
        self.received = True
        log.warning("SIGTERM: stopping the sweep (running trials stopped, state saved for --resume)")
        tune_stop(signum, frame)

    def restore(self) -> None:
        if self.installed:  # None: a handler Python did not install (e.g. Ray's): back to the default
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)


def _ship_methods() -> dict:
    """The registered methods, for trial processes; a method defined outside an installed package (a
    test module, a notebook) travels by value, since a trial's process cannot import its module."""
    registered = snapshot()
    for method in registered.values():
        for cls in (method.config, method.model):
            module = getattr(cls, "__module__", "")
            if isinstance(cls, type) and not module.startswith("deptune.") and module in sys.modules:
                ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    return registered


@dataclass(frozen=True)
class Trials:
    """What every trial gets: the spec as the trials' nodes see its paths, and the files that travel with it."""

    spec: SweepSpec
    shipment: Shipment | None


def _trainable(
    spec: SweepSpec, execution: Execution, storage: str, trials: Trials, tracking: TrialTracking | PublishedTracking
):
    train_storage = join(storage, f"{execution.name}-train")
    fn = tune.with_parameters(
        train_trial,
        spec=trials.spec,
        methods=_ship_methods(),
        train_storage=train_storage,
        tracking=tracking,
        shipment=trials.shipment,
        experiment=join(storage, execution.name),
    )
    res = spec.resources
    if res.resolved_runner == "tune":  # the actor is the trial's one worker
        return tune.with_resources(fn, {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker})
    return tune.with_resources(fn, {"cpu": spec.sweep.driver_cpus})


def _run_config(spec: SweepSpec, execution: Execution, storage: str, callbacks: list) -> tune.RunConfig:
    """Trials in their actor keep their checkpoints in Tune, which keeps them all: `CheckpointRetention`
    deletes the superseded ones once no saved state can name them; Ray Train runs keep their own and restart
    their own dead workers. Tune restarts a trial whose actor died (with its node): one in its actor from
    Tune's checkpoint, one on Ray Train from its run's (the run is named after the trial)."""
    in_actor = spec.resources.resolved_runner == "tune"
    if in_actor:
        callbacks = [*callbacks, CheckpointRetention(spec.train.keep_checkpoints)]
    filesystem, path = ray_storage(storage)
    return tune.RunConfig(
        name=execution.name,
        storage_path=path,
        storage_filesystem=filesystem,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=spec.train.max_failures),
        verbose=1,
    )


def _new_tuner(
    prepared: PreparedSweep,
    study: optuna.Study,
    execution: Execution,
    storage: str,
    trials: Trials,
    opening: OpeningTracker,
) -> tune.Tuner:
    spec = prepared.spec
    sampler = spec.sweep.sampler.build(execution.seed, spec)
    searcher = StudySearcher(
        spec,
        prepared.plan,
        study.study_name,
        prepared.study_url,
        sampler,
        execution.number,
        journal_root=trial_journals_for(spec, execution),
    )
    searcher.on_finished = opening.finish_trial  # each child run is closed as soon as the study records it
    scheduler = spec.sweep.scheduler.build(spec, trial_journals_for(spec, execution))
    objective = spec.sweep.objective
    progress = SweepProgress(
        objective.metric, objective.mode, spec.train.steps, run_demand(spec.base_run(), spec.sweep.driver_cpus)
    )
    return tune.Tuner(
        _trainable(spec, execution, storage, trials, opening.published),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.sweep.trials,
            max_concurrent_trials=spec.sweep.max_concurrent,
            time_budget_s=spec.sweep.time_budget_s,
            reuse_actors=spec.resources.resolved_runner == "tune",
        ),
        run_config=_run_config(spec, execution, storage, [StudyEvents(searcher), _TrackingOpened(opening), progress]),
    )


class _TrackingOpened(tune.Callback):
    """Ends the sweep (before any trial waits for long) if opening its MLflow tracking failed."""

    def __init__(self, opening: OpeningTracker) -> None:
        self.opening = opening

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if (error := self.opening.error()) is not None:
            raise error


def _restored_tuner(
    spec: SweepSpec, execution: Execution, storage: str, trials: Trials, tracking: TrialTracking
) -> tune.Tuner:
    filesystem, path = ray_storage(join(storage, execution.name))
    if not tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        raise SpecError("--resume", [f"--resume: no Tune experiment state at {join(storage, execution.name)}"])
    return tune.Tuner.restore(
        path,
        trainable=_trainable(spec, execution, storage, trials, tracking),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
        storage_filesystem=filesystem,
    )


def _analysis(storage: str, name: str) -> tune.ExperimentAnalysis | None:
    if not Folder(storage).exists(name):
        return None
    filesystem, path = ray_storage(join(storage, name))
    return tune.ExperimentAnalysis(path, storage_filesystem=filesystem)


def _execution_done(storage: str, name: str, spec: SweepSpec) -> bool:
    analysis = _analysis(storage, name)
    return analysis is not None and len(analysis.trials) >= spec.sweep.trials and not _unfinished_trials(storage, name)


def _unfinished_trials(storage: str, name: str) -> list[str]:
    """Trials an interrupted execution left to `--resume` (none when it ran to its end)."""
    analysis = _analysis(storage, name)
    return [t.trial_id for t in analysis.trials if t.status in UNFINISHED] if analysis else []
