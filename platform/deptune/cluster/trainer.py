"""The loop as a Ray Train job: N DDP workers (gloo on CPU, NCCL on GPU), checkpoints in Ray storage,
restarts from the latest checkpoint after a worker dies.

`build_trainer` is the embeddable piece: a Tune function trainable builds one per trial, adds a
`TuneReportCallback`, and fits it. `run_on_ray` is `deptune train`'s driver around it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from deptune.cluster.fit import check_fits
from deptune.cluster.local import connect
from deptune.train.spec import RunSpec
from deptune.methods.record import copy_adapter
from deptune.methods.registry import restore, snapshot
from deptune.train.session import print_reporter

if TYPE_CHECKING:
    from deptune.train.loop import TrainResult

log = logging.getLogger(__name__)

FAULT_ENV = "DEPTUNE_FAULT_FILE"
"""Test hook: while the file this names exists and holds "RANK STEP", worker RANK deletes it and SIGKILLs
itself after reporting STEP: a real process death mid-run, once."""


ReportHook = Callable[[dict[str, float], Path | None], None]
"""Rank 0's extra consumer of each evaluation: its metrics and, when the adapter improved, its folder."""


class RaySession:
    """One rank of a Ray Train worker group."""

    def __init__(self, on_report: ReportHook | None = None) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.on_report = on_report

    def restore_dir(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        return Path(checkpoint.to_directory()) if checkpoint else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, improved: bool) -> None:
        if self.on_report is not None:  # before Ray: a trial ASHA stops right after this report is killed
            self.on_report(metrics, checkpoint_dir if improved else None)
        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        _maybe_inject_fault(self.rank, int(metrics["step"]))


class ReportLog(ray.train.UserCallback):
    """Appends rank 0's metrics of every report, restarts included, to a JSON-lines file (on the node of
    the run's controller, which is the driver's), and prints them (Ray forwards it to the driver)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        with self.path.open("a") as log_file:
            log_file.write(json.dumps(metrics[0]) + "\n")
        print_reporter(metrics[0], None)


def read_report_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def _maybe_inject_fault(rank: int, step: int) -> None:
    control = os.environ.get(FAULT_ENV)
    if not control or not os.path.exists(control):
        return
    kill_rank, kill_step = (int(v) for v in Path(control).read_text().split())
    if rank == kill_rank and step >= kill_step:
        os.remove(control)
        os.kill(os.getpid(), signal.SIGKILL)


def _worker(config: dict) -> dict:
    """Rank 0's return value becomes `Result.return_value`: how the driver learns training diverged.
    `config["rank0_hook"]`, if given, makes rank 0's report hook from the spec (a sweep's MLflow logging)."""
    from deptune.train.loop import train  # here, not at the top: the Train controller unpickles this function
    restore(config.get("methods") or {})  # methods registered in the driver only (e.g. defined by a test)
    spec = RunSpec.model_validate(config["spec"])
    session = RaySession()
    if session.rank == 0 and config.get("rank0_hook") is not None:
        session.on_report = config["rank0_hook"](spec)
    result = train(spec, session=session)
    return {"diverged_at_step": result.diverged_at_step}


def diverged_at_step(result: ray.train.Result) -> int | None:
    return (getattr(result, "return_value", None) or {}).get("diverged_at_step")


def build_trainer(spec: RunSpec, name: str, storage: str | None = None,
                  callbacks: Sequence[ray.train.UserCallback] = (),
                  loop: Callable[[dict], None] | None = None,
                  rank0_hook: Callable[[RunSpec], ReportHook] | None = None) -> TorchTrainer:
    """A TorchTrainer running the loop (or `loop`, given {"spec": ...}) with the spec's resources,
    checkpoint retention and restarts; `rank0_hook(spec)` makes rank 0's report hook in the worker."""
    res, cfg = spec.resources, spec.train
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
    return TorchTrainer(
        loop or _worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "rank0_hook": rank0_hook, "methods": snapshot()},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage or spec.train.ray_storage(), callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute="objective", checkpoint_score_order="max"),
            # a worker group that cannot start fails the run instead of being retried forever
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=0)),
    )


def training_error(spec: RunSpec, exc: Exception) -> RuntimeError:
    """Ray Train's failure, said in the spec's terms."""
    res = spec.resources
    if isinstance(exc, ray.train.ControllerError):  # the worker group never started (or the controller broke)
        return RuntimeError(f"Ray Train could not start {res.workers} worker(s) with {res.cpus_per_worker:g} CPU / "
                            f"{res.gpus_per_worker:g} GPU each: {exc.controller_failure}")
    failures = "; ".join(f"rank {r}: {e}" for r, e in sorted(exc.worker_failures.items()))
    return RuntimeError(f"training failed after {spec.train.max_failures} restart(s): {failures}")


def run_on_ray(spec: RunSpec, address: str | None = None, name: str | None = None) -> "TrainResult":
    """Fit the run on Ray; the best adapter is copied to `<output_dir>/best` as in a local run, and every
    report is logged to `<output_dir>/reports.jsonl`.

    Ray Train resumes a run whose name already exists in storage: each call gets a fresh timestamped
    name unless `name` asks to continue one (say, after the driver died).
    """
    name = name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    started = connect(address)
    log_path = (spec.train.output_dir / "reports.jsonl").resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    try:
        check_fits(spec)
        try:
            result = build_trainer(spec, name, callbacks=[ReportLog(log_path)]).fit()
        except (ray.train.ControllerError, ray.train.WorkerGroupError) as exc:
            raise training_error(spec, exc) from exc
    finally:
        if started:
            ray.shutdown()
    if (step := diverged_at_step(result)) is not None:
        raise FloatingPointError(f"training diverged: non-finite loss at step {step}")
    best = result.get_best_checkpoint("objective", "max")
    best_dir = spec.train.output_dir / "best"
    if best is not None:
        with best.as_directory() as src:
            copy_adapter(src, best_dir)
    from deptune.train.loop import TrainResult
    metrics = dict(result.metrics or {})
    history = read_report_log(log_path)
    best_row = max((r for r in history if "objective" in r), key=lambda r: (r["objective"], -r["step"]))
    return TrainResult(
        best_step=int(metrics.get("best_step", best_row["step"])),
        best_metrics={k[5:]: v for k, v in best_row.items() if k.startswith("eval_")},
        test_metrics={k[5:]: v for k, v in metrics.items() if k.startswith("test_")},
        adapter_dir=best_dir if best is not None else None,
        trainable_params=int(metrics.get("trainable_params", 0)), history=history)
