"""The loop as a Ray Train job: N data-parallel workers (gloo on CPU, NCCL on GPU), checkpoints in Ray
storage, restarts from the latest checkpoint after a worker dies.

`build_trainer` is the embeddable piece: a sweep trial on `runner: train` builds one and fits it.
`run_on_ray` is `deptune train`'s driver around it, `run_source_on_ray` `deptune mpt-source`'s: each
teacher a run, then the multitask student, all resumable by the stage's name.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from deptune.cluster.fit import check_fits, train_on_held_cpus
from deptune.cluster.local import connect
from deptune.cluster.paths import LocalPath, arrive, other_nodes, pack, travel, unpack
from deptune.methods.catalog import restore, snapshot
from deptune.methods.record import ADAPTER_FILES, copy_adapter
from deptune.storage import ray_storage
from deptune.train.checkpoint import STATE_FILE
from deptune.train.config import IMPROVED_AT
from deptune.train.session import print_reporter
from deptune.train.spec import RunSpec, SourceSpec

if TYPE_CHECKING:
    from deptune.train.loop import TrainResult
    from deptune.train.multitask import SourceResult

log = logging.getLogger(__name__)

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
        return restored_checkpoint(ray.train.get_checkpoint())

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, improved: bool) -> None:
        if self.on_report is not None:  # before Ray: a trial ASHA stops right after this report is killed
            self.on_report(metrics, checkpoint_dir if improved else None)
        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class ReportLog(ray.train.UserCallback):
    """Appends rank 0's metrics of every report, restarts included, to a JSON-lines file (on the node of
    the run's controller, which is the driver's), and prints them (Ray forwards it to the driver)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        with self.path.open("a") as log_file:
            log_file.write(json.dumps(metrics[0]) + "\n")
        print_reporter(metrics[0], None)


CHECKPOINT_FILES = (*ADAPTER_FILES, STATE_FILE)


def restored_checkpoint(checkpoint: Checkpoint | None) -> Path | None:
    """The checkpoint Ray restores a run from, as a local folder. Ray's saved state can name a checkpoint
    that retention deleted after the state was saved (a driver killed between the two): then the newest
    whole checkpoint beside it is taken (one whose upload was cut short is passed over)."""
    if checkpoint is None:
        return None
    fs, path = checkpoint.filesystem, checkpoint.path
    if not _whole(fs, path):
        from pyarrow.fs import FileSelector, FileType

        parent = path.rstrip("/").rsplit("/", 1)[0]
        siblings = sorted(
            (
                info.path
                for info in fs.get_file_info(FileSelector(parent))
                if info.type == FileType.Directory and info.base_name.startswith("checkpoint_")
            ),
            reverse=True,
        )
        found = next((p for p in siblings if _whole(fs, p)), None)
        log.warning("checkpoint %s is gone; resuming from %s", path, found or "the start (no checkpoint is whole)")
        if found is None:
            return None
        checkpoint = Checkpoint(found, filesystem=fs)
    return Path(checkpoint.to_directory())


def newest_checkpoint(experiment: str, trial_id: str) -> Path | None:
    """The newest whole checkpoint a Tune trial left in `experiment` (its folder is named after its id)."""
    from deptune.storage import Folder

    folder = Folder(experiment)
    trial = next((name for name in folder.folders() if f"_{trial_id}_" in name), None)
    if trial is None:
        return None
    names = sorted((n for n in folder.child(trial).folders() if n.startswith("checkpoint_")), reverse=True)
    whole = next((n for n in names if all(folder.child(trial, n).exists(f) for f in CHECKPOINT_FILES)), None)
    if whole is None:
        return None
    log.warning("trial %s starts again where its first run left it: %s", trial_id, whole)
    return Path(Checkpoint(folder.child(trial, whole).path, filesystem=folder.fs).to_directory())


def _whole(fs, path: str) -> bool:
    from pyarrow.fs import FileType

    return all(info.type == FileType.File for info in fs.get_file_info([f"{path}/{name}" for name in CHECKPOINT_FILES]))


def read_report_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def _worker(config: dict) -> dict:
    """Rank 0's return value becomes `Result.return_value`: how the driver learns training diverged.
    `config["rank0_hook"]`, if given, makes rank 0's report hook from the spec (a sweep's MLflow logging)."""
    from deptune.train.loop import train  # here, not at the top: the Train controller unpickles this function

    restore(config.get("methods") or {})  # methods registered in the driver only (e.g. defined by a test)
    spec = arrive(RunSpec.model_validate(config["spec"]), config.get("shipment"))
    train_on_held_cpus()
    session = RaySession()
    if session.rank == 0 and config.get("rank0_hook") is not None:
        session.on_report = config["rank0_hook"](spec)
    result = train(spec, session=session)
    return {"diverged_at_step": result.diverged_at_step}


def _student_worker(config: dict) -> dict:
    """A rank of MPT's multitask student (`config["teachers"]`: each source task's teacher adapter)."""
    from deptune.train.multitask import fit_student  # the Train controller unpickles this function

    restore(config.get("methods") or {})
    spec = arrive(SourceSpec.model_validate(config["spec"]), config.get("shipment"))
    train_on_held_cpus()
    teachers = {task: Path(path) for task, path in config["teachers"].items()}
    if config.get("teacher_files") is not None:  # the teachers' adapters travelled from the driver's disk
        teachers.update({key.removeprefix("teachers."): path for key, path in unpack(config["teacher_files"]).items()})
    return {"diverged_at_step": fit_student(spec, teachers, RaySession()).diverged_at_step}


def diverged_at_step(result: ray.train.Result) -> int | None:
    return (getattr(result, "return_value", None) or {}).get("diverged_at_step")


def build_trainer(
    spec: RunSpec | SourceSpec,
    name: str,
    storage: str | None = None,
    callbacks: Sequence[ray.train.UserCallback] = (),
    loop: Callable[[dict], None] | None = None,
    rank0_hook: Callable[[RunSpec], ReportHook] | None = None,
    extra: dict | None = None,
) -> TorchTrainer:
    """A TorchTrainer running the loop (or `loop`, given {"spec": ..., **extra}) with the spec's resources,
    checkpoint retention and restarts; `rank0_hook(spec)` makes rank 0's report hook in the worker."""
    res, cfg = spec.resources, spec.train
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
    filesystem, storage_path = ray_storage(storage or spec.train.ray_storage())
    return TorchTrainer(
        loop or _worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "rank0_hook": rank0_hook,
            "methods": snapshot(),
            **(extra or {}),
        },
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=IMPROVED_AT, checkpoint_score_order="max"
            ),
            # a worker group that cannot start fails the run instead of being retried forever
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=0),
        ),
    )


def training_error(spec: RunSpec | SourceSpec, exc: Exception) -> RuntimeError:
    """Ray Train's failure, said in the spec's terms."""
    res = spec.resources
    if isinstance(exc, ray.train.ControllerError):  # the worker group never started (or the controller broke)
        return RuntimeError(
            f"Ray Train could not start {res.workers} worker(s) with {res.cpus_per_worker:g} CPU / "
            f"{res.gpus_per_worker:g} GPU each: {exc.controller_failure}"
        )
    failures = "; ".join(f"rank {r}: {e}" for r, e in sorted(exc.worker_failures.items()))
    return RuntimeError(f"training failed after {spec.train.max_failures} restart(s): {failures}")


def run_on_ray(spec: RunSpec, address: str | None = None, name: str | None = None) -> TrainResult:
    """Fit the run on Ray; the best adapter is copied to `<output_dir>/best` as in a local run, and every
    report is logged to `<output_dir>/reports.jsonl`.

    Ray Train resumes a run whose name already exists in storage: each call gets a fresh timestamped
    name unless `name` asks to continue one (say, after the driver died).
    """
    started = connect(address)
    try:
        check_fits(spec)
        spec, shipment = travel(spec, "<spec>")
        return fit(
            spec, name or f"train-{time.strftime('%Y%m%d-%H%M%S')}", fresh=name is None, extra={"shipment": shipment}
        )
    finally:
        if started:
            ray.shutdown()


def run_source_on_ray(spec: SourceSpec, address: str | None = None, name: str | None = None) -> SourceResult:
    """MPT's source stage as Ray Train runs `<name>-teacher-<task>` and `<name>-student`. Given the `name` of an
    earlier stage (its driver died), teachers it finished are kept and the rest resume from their checkpoints."""
    from deptune.train.multitask import finished_teacher, mark_teacher_finished, source_result, teacher_run

    stage = name or f"mpt-source-{time.strftime('%Y%m%d-%H%M%S')}"
    started = connect(address)
    try:
        check_fits(spec)
        spec, shipment = travel(spec, "<spec>")
        teachers = {}
        for i, task in enumerate(spec.task_names):
            run = teacher_run(spec, i)
            teachers[task] = finished_teacher(run, stage) if name else None
            if teachers[task] is None:
                log.info("MPT source stage: teacher %d/%d on %s", i + 1, len(spec.task_names), task)
                teachers[task] = fit(
                    run, f"{stage}-teacher-{task}", fresh=name is None, extra={"shipment": shipment}
                ).adapter_dir
                if teachers[task] is None:
                    raise RuntimeError(f"the teacher of {task} left no checkpoint (run {stage}-teacher-{task})")
                mark_teacher_finished(run, stage)
        log.info("MPT source stage: the student on %s", ", ".join(spec.task_names))
        teacher_files = (
            pack([LocalPath(f"teachers.{task}", "adapter", path.resolve()) for task, path in teachers.items()])
            if other_nodes()
            else None
        )
        result = fit(
            spec,
            f"{stage}-student",
            fresh=name is None,
            loop=_student_worker,
            extra={
                "teachers": {task: str(path.resolve()) for task, path in teachers.items()},
                "shipment": shipment,
                "teacher_files": teacher_files,
            },
        )
    finally:
        if started:
            ray.shutdown()
    return source_result(result, teachers, spec.train.output_dir / "best")


def fit(spec: RunSpec | SourceSpec, name: str, fresh: bool = True, **trainer: object) -> TrainResult:
    """Fit one Ray Train run on the connected cluster: its best adapter lands in `<output_dir>/best`, its
    reports in `<output_dir>/reports.jsonl` (appended to when the run resumes: `fresh` False)."""
    log_path = (spec.train.output_dir / "reports.jsonl").resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        log_path.unlink(missing_ok=True)
    try:
        result = build_trainer(spec, name, callbacks=[ReportLog(log_path)], **trainer).fit()
    except (ray.train.ControllerError, ray.train.WorkerGroupError) as exc:
        raise training_error(spec, exc) from exc
    if (step := diverged_at_step(result)) is not None:
        raise FloatingPointError(f"{name}: training diverged: non-finite loss at step {step}")
    best = result.get_best_checkpoint(IMPROVED_AT, "max")  # the best adapter's step
    best_dir = spec.train.output_dir / "best"
    if best is not None:
        with best.as_directory() as src:
            copy_adapter(src, best_dir)
    from deptune.train.loop import TrainResult

    metrics = dict(result.metrics or {})
    history = read_report_log(log_path) if log_path.is_file() else []
    rows = [r for r in history if "objective" in r]
    best_row = max(rows, key=lambda r: (r["objective"], -r["step"])) if rows else {}
    return TrainResult(
        best_step=int(metrics.get("best_step", best_row.get("step", -1))),
        best_metrics={k[5:]: v for k, v in best_row.items() if k.startswith("eval_") and k != "eval_latency_ms"},
        test_metrics={k[5:]: v for k, v in metrics.items() if k.startswith("test_")},
        adapter_dir=best_dir if best is not None else None,
        trainable_params=int(metrics.get("trainable_params", 0)),
        history=history,
    )
