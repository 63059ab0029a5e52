"""One sweep trial: a Tune function trainable, running the training loop by the spec's runner.

- `tune` (one worker, the default): the loop runs inside the Tune trial actor, behind a `TuneSession`.
  Tune reuses the actor for the next trial, so imports, the frozen backbone and the tokenised data
  (`train.cache.PROCESS_CACHE`) are paid once per actor, not once per trial. Every evaluation is a
  `tune.report` with its checkpoint; a restarted trial resumes from `tune.get_checkpoint()`.
- `train` (several workers, DDP): the trial fits a Ray Train run (the Ray 2.60 pattern); its workers
  report every evaluation and `TrialReport` forwards rank 0's metrics to Tune. The Train run is named
  after the Tune trial, so a trial that `--resume` restarts continues from its latest checkpoint.

Either way ASHA can stop the trial at any evaluation, and a divergence (a non-finite loss) ends it with a
final `diverged_at_step` result that the searcher records as a failure, not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray import tune
from ray.tune import Checkpoint
from ray.tune.integration.ray_train import TuneReportCallback

from deptune.cluster.fit import train_on_held_cpus
from deptune.cluster.paths import Shipment, arrive
from deptune.cluster.trainer import (
    build_trainer,
    diverged_at_step,
    newest_checkpoint,
    restored_checkpoint,
    training_error,
)
from deptune.methods.catalog import Method, restore
from deptune.sweep.config import SweepSpec
from deptune.sweep.space import trial_spec
from deptune.tracking.trial import PublishedTracking, TrackerHook, TrialTracking
from deptune.train.cache import PROCESS_CACHE, release_trial_memory
from deptune.train.loop import train
from deptune.train.spec import RunSpec

OPTUNA_TRIAL_KEY = "optuna_trial"  # added to each config by the searcher: the study's trial number
RUN_KEY = "run_id"
"""Added to each config by the searcher: the id the trial's journal, MLflow run, Ray Train run and checkpoints go
by. Tune's trial id, except for a trial that a resumed sweep starts again under a new id (Tune's last snapshot
before the driver died did not know it): its first id, so it continues its own record and checkpoints."""


DIVERGED = "diverged_at_step"


class TuneSession:
    """The loop's session inside a Tune trial actor: rank 0 of 1, on the actor's (fractional) GPU if it has
    one; each evaluation goes to rank 0's hook (the MLflow child run), then to Tune with its checkpoint."""

    rank = 0
    world_size = 1

    def __init__(
        self,
        device: torch.device,
        on_report: Callable[[dict, Path | None], None] | None,
        earlier: tuple[str | None, str] = (None, ""),
    ) -> None:
        self.device, self.on_report, self.earlier = device, on_report, earlier

    def restore_dir(self) -> Path | None:
        """Tune's checkpoint of this trial; for a trial started again under a new id, its first id's newest."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is None and self.earlier[0] is not None:
            return newest_checkpoint(*self.earlier)
        return restored_checkpoint(checkpoint)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, improved: bool) -> None:
        if self.on_report is not None and DIVERGED not in metrics:
            self.on_report(metrics, checkpoint_dir if improved else None)
        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)  # ASHA may stop the trial here: the thread ends in it


def actor_device(run: RunSpec) -> torch.device:
    """The actor's GPU (Ray sets CUDA_VISIBLE_DEVICES to what the trial was given), else the CPU."""
    if run.train.device != "cpu" and ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


class TrialReport(TuneReportCallback):
    """Tune's report callback, minus the divergence notice (a NaN must not reach ASHA or the study)."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if "diverged_at_step" not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def train_trial(
    config: dict[str, Any],
    spec: SweepSpec,
    methods: dict[str, Method],
    train_storage: str,
    tracking: TrialTracking | PublishedTracking | None = None,
    shipment: Shipment | None = None,
    experiment: str | None = None,
) -> None:
    """`shipment`: the driver's files that travel to the trials' nodes (`cluster.paths`); `experiment`: the Tune
    experiment's folder, where a trial started again under a new id finds its first id's checkpoints."""
    restore(methods)  # methods registered in the driver only (e.g. defined by a test) are known here too
    if isinstance(tracking, PublishedTracking):  # the driver opened MLflow while this actor started
        tracking = tracking.resolve()
    dimensions = type(spec.method).dimension_kinds()
    run = trial_spec(spec, {k: v for k, v in config.items() if k in dimensions})
    trial_id = tune.get_context().get_trial_id()
    run_id = config.get(RUN_KEY, trial_id)
    hook = TrackerHook(tracking, run_id, config.get(OPTUNA_TRIAL_KEY)) if tracking else None
    if run.resources.resolved_runner == "tune":
        earlier = experiment if run_id != trial_id else None
        _train_in_actor(arrive(run, shipment), hook, (earlier, run_id))
        return
    trainer = build_trainer(
        run,
        name=run_id,
        storage=train_storage,
        callbacks=[TrialReport()],
        rank0_hook=hook,
        extra={"shipment": shipment},
    )  # each worker's node gets the files
    try:
        result = trainer.fit()
    except (ray.train.ControllerError, ray.train.WorkerGroupError) as exc:
        raise training_error(run, exc) from None
    if (step := diverged_at_step(result)) is not None:
        tune.report({"step": float(step), DIVERGED: float(step)})


TRIAL_FOLDER_PREFIX = f"{train_trial.__name__}_"
"""Tune names each trial's folder in the experiment after the trainable: `train_trial_<trial id>`."""


def _train_in_actor(run: RunSpec, hook: TrackerHook | None, earlier: tuple[str | None, str]) -> None:
    """The loop in this actor, on the process's cached backbone and data; memory of the trial's own
    tensors is given back when it ends (however it ends: finished, stopped by ASHA, diverged)."""
    device = actor_device(run)
    train_on_held_cpus()
    session = TuneSession(device, hook(run) if hook else None, earlier)
    try:
        train(run, session=session, cache=PROCESS_CACHE)  # a divergence is reported by the loop itself
    finally:
        del session
        release_trial_memory(device)
