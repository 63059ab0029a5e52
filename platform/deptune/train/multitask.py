"""MPT's source stage (Wang et al., 2023): distil per-task teachers into one shared prompt.

1. Each source task gets a vanilla-PT teacher (l tokens), trained as an ordinary run.
2. A student MPT adapter (P* and one (u_k, v_k) per task) trains on the multitask mixture, by the one
   training loop (`train/loop.py`: its optimizer, schedule, evaluation, best adapter, checkpoints and
   resume; in this process, or as a Ray Train job on any number of workers). As the paper:
   examples-proportional mixing (each of the batch_size examples of a step comes from task k with
   probability min(n_k, cap) / sum_j min(n_j, cap); `mixing.strategy: balanced` takes batch_size / K of each
   instead), and the loss L_PLM + lambda * (L_logits + L_hidden): the task loss, KL(teacher_k || student_k)
   and the MSE of the last-layer hidden states (encoder and decoder for seq2seq), each task's part of the
   step weighted by its share of the batch's examples.
3. The best student (mean of the tasks' first validation metrics, never the loss) is the source adapter:
   P*, every (u, v) and the list of source tasks, in `<train.output_dir>/best`.

Encoder backbones: each task keeps its teacher's classification head, frozen, swapped in for that task's
part of the step (so its tasks need the same number of labels); the source adapter carries no head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deptune.backbones import Backbone, load_backbone
from deptune.methods.adapters import build_model, load_adapter
from deptune.methods.io import read_tensors
from deptune.methods.model import PromptModel
from deptune.methods.mpt.model import MPTModel
from deptune.methods.prompt_tuning.config import PromptTuningConfig
from deptune.tasks.base import Task
from deptune.tasks.catalog import get_task
from deptune.tasks.loading import load_splits
from deptune.train.checkpoint import Progress
from deptune.train.data import Encoded, MixtureBatches, encode, mixing_rates, train_batch
from deptune.train.evaluate import evaluate
from deptune.train.loop import (
    Scores,
    StepLoss,
    TrainResult,
    dataset_tokens,
    resolve_device,
    run_loop,
    seed_everything,
    train,
)
from deptune.train.loss import distillation_terms, item_count, mpt_source_loss, task_loss_sum
from deptune.train.session import LocalSession, Reporter, Session, print_reporter
from deptune.train.spec import RunSpec, SourceSpec

TEACHER_DONE = "teacher.json"
"""Written beside a finished teacher's adapter: which source-stage run trained it (resuming that run skips it)."""


@dataclass
class SourceTask:
    """One source task as the student stage sees it."""

    task: Task
    train: list[Encoded]
    validation: list[Encoded]
    teacher: PromptModel
    head: dict[str, torch.Tensor]  # the teacher's classification head (encoders), swapped in for this task


@dataclass
class SourceResult:
    adapter_dir: Path
    teacher_dirs: dict[str, Path]
    best_step: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def train_source(spec: SourceSpec, reporter: Reporter = print_reporter) -> SourceResult:
    """The whole stage in this process: teachers first, then the multitask student."""
    teachers = {cfg.name: train_teacher(spec, i, reporter) for i, cfg in enumerate(spec.source_tasks)}
    return train_student(spec, teachers, reporter)


def teacher_run(spec: SourceSpec, index: int) -> RunSpec:
    """Task `index`'s vanilla-PT teacher: the student's l, s and prompt init, the stage's resources."""
    task, m = spec.source_tasks[index], spec.method
    method = PromptTuningConfig(
        prompt_length=m.prompt_length,
        max_length=m.max_length,
        init=m.init,
        init_text=m.init_text,
        causal_rule=m.causal_rule,
    )
    out = spec.train.output_dir / "teachers" / task.name
    return RunSpec(
        backbone=spec.backbone,
        task=task,
        method=method,
        resources=spec.resources,
        train=spec.teacher.model_copy(update={"output_dir": out}),
    )


def train_teacher(spec: SourceSpec, index: int, reporter: Reporter = print_reporter) -> Path:
    run = teacher_run(spec, index)
    result = train(run, reporter=lambda m, d: reporter({"teacher": float(index), **m}, d))
    if result.adapter_dir is None:
        raise FloatingPointError(
            f"the teacher of {run.task.name} diverged: non-finite loss at step {result.diverged_at_step}"
        )
    return result.adapter_dir


def finished_teacher(run: RunSpec, stage_name: str) -> Path | None:
    """The teacher's adapter if source-stage run `stage_name` already finished it (a resumed stage)."""
    marker = run.train.output_dir / TEACHER_DONE
    if marker.is_file() and json.loads(marker.read_text()).get("stage") == stage_name:
        return run.train.output_dir / "best"
    return None


def mark_teacher_finished(run: RunSpec, stage_name: str) -> None:
    (run.train.output_dir / TEACHER_DONE).write_text(json.dumps({"stage": stage_name}))


def fit_student(spec: SourceSpec, teacher_dirs: dict[str, Path], session: Session) -> TrainResult:
    """The multitask student by the training loop, on `session` (this process, or a Ray Train rank)."""
    seed_everything(spec.train.rng_seed)  # the same student init on every rank
    return run_loop(SourceWorkload(spec, teacher_dirs, session.device), spec.train, session)


def train_student(
    spec: SourceSpec, teacher_dirs: dict[str, Path], reporter: Reporter = print_reporter, session: Session | None = None
) -> SourceResult:
    """The student in this process (unless `session` says otherwise); divergence is an error."""
    cfg = spec.train
    result = fit_student(spec, teacher_dirs, session or LocalSession(cfg.output_dir, resolve_device(cfg), reporter))
    if result.diverged_at_step is not None:
        raise FloatingPointError(f"the source stage diverged: non-finite loss at step {result.diverged_at_step}")
    return source_result(result, teacher_dirs, cfg.output_dir / "best")


def source_result(result: TrainResult, teacher_dirs: dict[str, Path], best_dir: Path) -> SourceResult:
    return SourceResult(best_dir, teacher_dirs, result.best_step, result.best_metrics, result.history)


class SourceWorkload:
    """The student's step (each task's part of the mixed batch, this rank's slice of it) and its scores."""

    def __init__(self, spec: SourceSpec, teacher_dirs: dict[str, Path], device: torch.device) -> None:
        self.spec, self.cfg = spec, spec.train
        n_labels = {len(get_task(t.name).label_names) for t in spec.source_tasks}
        self.backbone = load_backbone(spec.backbone, num_labels=max(1, *n_labels))
        if self.backbone.family == "encoder" and len(n_labels) > 1:
            raise ValueError(
                f"source_tasks: an encoder's source tasks need the same number of labels (their heads "
                f"are swapped on one backbone); got {sorted(n_labels)}"
            )
        self.sources = [
            _source_task(spec, i, self.backbone, teacher_dirs[t.name], device) for i, t in enumerate(spec.source_tasks)
        ]
        self.model = build_model(self.backbone, spec.student_method()).to(device)
        for source in self.sources:  # teachers and heads stay as trained
            for param in [*source.teacher.method_tensors().values(), *_head_params(self.model, source.head)]:
                param.requires_grad_(False)
        self.mixture = make_mixture(spec, [len(source.train) for source in self.sources])
        self.adapter_task = "+".join(spec.task_names)
        self.constants = {
            "examples_train": float(sum(len(s.train) for s in self.sources)),
            "examples_validation": float(sum(len(s.validation) for s in self.sources)),
        }

    def backward(self, step: int, rank: int, world: int, device: torch.device, autocast) -> StepLoss:
        """Task k's part weighs (its examples on this rank) / batch_size, so the ranks' parts sum to the step's;
        the step's loss is the whole objective (a diverging distillation term ends the run like the task loss)."""
        loss, tokens, terms = 0.0, 0, {}
        for k, (source, indices) in enumerate(zip(self.sources, self.mixture.indices(step - 1))):
            name = source.task.name
            terms[f"mix_{name}"] = len(indices) / self.cfg.batch_size
            mine = indices[rank::world]
            if not mine:  # the draw gave this task no example of this rank's slice this step
                continue
            items = [source.train[i] for i in mine]
            batch = {
                key: v.to(device) for key, v in train_batch(items, self.backbone, source.task.is_regression).items()
            }
            with autocast:
                parts = task_terms(self.model, k, source, batch, self.spec)
            total = mpt_source_loss(parts["loss"], parts["kl"], parts["mse"], self.spec.distill.weight)
            share = len(mine) / self.cfg.batch_size
            (total * share).backward()
            values = {key: v.item() for key, v in parts.items()}
            loss += total.item() * share
            tokens += dataset_tokens(batch, self.model.family)
            terms.update({f"{key}_{name}": v for key, v in values.items()})
        return StepLoss(loss, tokens, terms)

    def evaluate(self, device: torch.device, autocast) -> Scores:
        """Each task's validation metrics with its own prompt (and head); the objective is the mean of the
        tasks' first metrics."""
        metrics = {}
        for k, source in enumerate(self.sources):
            _use_head(self.model, source.head)
            with self.model.for_task(k), autocast:
                scores = evaluate(
                    self.model,
                    self.backbone,
                    source.task,
                    source.validation,
                    self.cfg.eval_batch_size,
                    self.cfg.max_new_tokens,
                    device,
                )
            metrics.update({f"{source.task.name}_{name}": v for name, v in scores.items()})
        return Scores(
            self._mean(metrics, lambda t: t.metric_names[0]), self._mean(metrics, lambda t: t.paper_metric), metrics
        )

    def test(self, progress: Progress, device: torch.device, autocast) -> dict[str, float]:
        return {}  # the source stage has no test split: its adapter is judged by the target runs

    def _mean(self, metrics: dict[str, float], metric) -> float:
        return sum(metrics[f"{s.task.name}_{metric(s.task)}"] for s in self.sources) / len(self.sources)


def make_mixture(spec: SourceSpec, sizes: list[int]) -> MixtureBatches:
    """The step-by-step task mixture of the source stage (`mixing`)."""
    rates = None if spec.mixing.strategy == "balanced" else mixing_rates(sizes, spec.mixing.size_cap)
    return MixtureBatches(sizes, spec.train.batch_size, spec.train.rng_seed, rates)


def _source_task(
    spec: SourceSpec, index: int, backbone: Backbone, teacher_dir: Path, device: torch.device
) -> SourceTask:
    task_cfg, cfg = spec.source_tasks[index], spec.train
    task = get_task(task_cfg.name)
    splits = load_splits(task_cfg)
    s, rule = spec.method.max_length, spec.method.causal_rule
    teacher = load_adapter(backbone, teacher_dir).to(device)
    head = {k: v.to(device) for k, v in read_tensors(teacher_dir).items() if k in teacher.head_names}
    return SourceTask(
        task,
        encode(splits.train, backbone, task, s, cfg.max_target_length, rule),
        encode(splits.validation, backbone, task, s, cfg.max_target_length, rule),
        teacher,
        head,
    )


def _head_params(model: PromptModel, head: dict[str, torch.Tensor]) -> list[torch.nn.Parameter]:
    params = dict(model.backbone.named_parameters())
    return [params[name] for name in head]


def _use_head(model: PromptModel, head: dict[str, torch.Tensor]) -> None:
    """Put task k's classification head on the shared backbone (encoders; a no-op otherwise)."""
    with torch.no_grad():
        for param, name in zip(_head_params(model, head), head):
            param.copy_(head[name])


def task_terms(student: MPTModel, k: int, source: SourceTask, batch: dict, spec: SourceSpec) -> dict[str, torch.Tensor]:
    """Task k's mean task loss (L_PLM), L_logits and L_hidden on its part of the step (teacher without dropout)."""
    _use_head(student, source.head)
    labels = None if student.family == "encoder" else batch["labels"]  # encoders: the loss is ours, not HF's
    ids, mask = batch["input_ids"], batch["attention_mask"]
    source.teacher.eval()
    with torch.no_grad():
        teacher = source.teacher(ids, mask, labels=labels, output_hidden_states=True)
    student.train()
    with student.for_task(k):
        out = student(ids, mask, labels=labels, output_hidden_states=True)
    loss = task_loss_sum(student, out.logits, batch["labels"]) / max(item_count(batch, student.family), 1)
    kl, mse = distillation_terms(student, out, teacher, batch["labels"], mask, spec.distill.temperature)
    return {"loss": loss, "kl": kl, "mse": mse}
