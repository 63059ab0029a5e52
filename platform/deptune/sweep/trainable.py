"""One sweep trial: a Tune function trainable that fits the trial's Ray Train run (the Ray 2.60 pattern).

Train workers report every evaluation; `TrialReport` forwards rank 0's metrics to Tune (so ASHA can stop
the trial mid-training) except a divergence notice, which ends the trial as an error. The Train run is
named after the Tune trial, so a trial that `deptune sweep --resume` restarts continues from its latest
checkpoint instead of starting over.
"""

from __future__ import annotations

from typing import Any

import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from deptune.methods.registry import Method, restore
from deptune.train.spec import RunSpec
from deptune.sweep.config import SEARCH_KEYS, SweepSpec
from deptune.tracking.trial import TrackerHook, TrialTracking
from deptune.cluster.trainer import build_trainer, diverged_at_step, training_error

OPTUNA_TRIAL_KEY = "optuna_trial"  # added to each config by the searcher: the study's trial number


def trial_run(spec: SweepSpec, params: dict[str, Any]) -> RunSpec:
    """The sweep's base run with the trial's values: method fields (m, r) go to the method section, the
    learning rates to the train section."""
    base = spec.base_run()
    method = {k: v for k, v in params.items() if k in type(base.method).model_fields}
    train = {k: v for k, v in params.items() if k in type(base.train).model_fields and k not in method}
    return base.model_copy(update={"method": base.method.model_copy(update=method),
                                   "train": base.train.model_copy(update=train)})


class TrialReport(TuneReportCallback):
    """Tune's report callback, minus the divergence notice (a NaN must not reach ASHA or the study)."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if "diverged_at_step" not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def run_trial(config: dict[str, Any], spec: SweepSpec, methods: dict[str, Method], train_storage: str,
              tracking: TrialTracking | None = None) -> None:
    restore(methods)  # methods registered in the driver only (e.g. defined by a test) are known here too
    run = trial_run(spec, {k: v for k, v in config.items() if k in SEARCH_KEYS})
    trial_id = tune.get_context().get_trial_id()
    hook = TrackerHook(tracking, trial_id, config.get(OPTUNA_TRIAL_KEY)) if tracking else None
    trainer = build_trainer(run, name=trial_id, storage=train_storage, callbacks=[TrialReport()], rank0_hook=hook)
    try:
        result = trainer.fit()
    except (ray.train.ControllerError, ray.train.WorkerGroupError) as exc:
        raise training_error(run, exc) from None
    if (step := diverged_at_step(result)) is not None:
        raise FloatingPointError(f"training diverged: non-finite loss at step {step} "
                                 f"(lr_prompt={run.train.lr_prompt:g}, lr_lowrank={run.train.lr_lowrank:g})")
