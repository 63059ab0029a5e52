"""MPT's source stage (Wang et al., 2023): distil per-task teachers into one shared prompt.

1. Each source task gets a vanilla-PT teacher (l tokens), trained by the ordinary loop.
2. A student MPT adapter (P* and one (u_k, v_k) per task) trains on the multitask mixture. As the paper:
   examples-proportional mixing (each of the batch_size examples of a step comes from task k with
   probability min(n_k, cap) / sum_j min(n_j, cap); `mixing.strategy: balanced` takes batch_size / K of each
   instead), and the loss L_PLM + lambda * (L_logits + L_hidden): the task loss, KL(teacher_k || student_k)
   and the MSE of the last-layer hidden states (encoder and decoder for seq2seq), each task's part of the
   step weighted by its share of the batch's examples.
3. The best student (mean of the tasks' first validation metrics, never the loss) is the source adapter:
   P*, every (u, v) and the list of source tasks, in `<train.output_dir>/best`.

Encoder backbones: each task keeps its teacher's classification head, frozen, swapped in for that task's
part of the step (so its tasks need the same number of labels); the source adapter carries no head.
One process, one device: the source stage runs once per source mixture, not per sweep trial.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

from deptune.train.spec import RunSpec, SourceSpec
from deptune.methods.mpt.model import MPTModel
from deptune.methods.model import PromptModel
from deptune.methods.prompt_tuning.config import PromptTuningConfig
from deptune.methods.adapters import build_model
from deptune.methods.adapters import load_adapter
from deptune.methods.io import read_tensors, save_adapter
from deptune.backbones import Backbone, load_backbone
from deptune.tasks.base import Task
from deptune.tasks.registry import get_task
from deptune.tasks.loading import load_splits
from deptune.train.data import Encoded, MixtureBatches, encode, mixing_rates, train_batch
from deptune.train.evaluate import evaluate
from deptune.train.loop import make_optimizer, resolve_device, seed_everything, train
from deptune.train.loss import distillation_terms, item_count, mpt_source_loss, task_loss_sum
from deptune.train.session import print_reporter


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


def train_source(spec: SourceSpec, reporter=print_reporter) -> SourceResult:
    """Teachers first, then the multitask student; returns where the source adapter is."""
    teachers = {cfg.name: train_teacher(spec, i, reporter) for i, cfg in enumerate(spec.source_tasks)}
    return train_student(spec, teachers, reporter)


def teacher_run(spec: SourceSpec, index: int) -> RunSpec:
    """Task `index`'s vanilla-PT teacher: the student's l, s and prompt init."""
    task, m = spec.source_tasks[index], spec.method
    method = PromptTuningConfig(prompt_length=m.prompt_length, max_length=m.max_length, init=m.init,
                                init_text=m.init_text)
    out = spec.train.output_dir / "teachers" / task.name
    return RunSpec(backbone=spec.backbone, task=task, method=method,
                   train=spec.teacher.model_copy(update={"output_dir": out}))


def train_teacher(spec: SourceSpec, index: int, reporter=print_reporter) -> Path:
    run = teacher_run(spec, index)
    result = train(run, reporter=lambda m, d: reporter({"teacher": float(index), **m}, d))
    if result.adapter_dir is None:
        raise RuntimeError(f"the teacher of {run.task.name} diverged at step {result.diverged_at_step}")
    return result.adapter_dir


def train_student(spec: SourceSpec, teacher_dirs: dict[str, Path], reporter=print_reporter) -> SourceResult:
    cfg = spec.train
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    n_labels = {len(get_task(t.name).label_names) for t in spec.source_tasks}
    backbone = load_backbone(spec.backbone, num_labels=max(1, *n_labels))
    sources = [_source_task(spec, i, backbone, teacher_dirs[t.name], device) for i, t in enumerate(spec.source_tasks)]
    if backbone.family == "encoder" and len(n_labels) > 1:
        raise ValueError(f"source_tasks: an encoder's source tasks need the same number of labels (their heads are "
                         f"swapped on one backbone); got {sorted(n_labels)}")
    student = build_model(backbone, spec.student_method()).to(device)
    for source in sources:  # teachers and heads stay as trained
        for param in [*source.teacher.method_tensors().values(), *_head_params(student, source.head)]:
            param.requires_grad_(False)
    optimizer = make_optimizer(student, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and cfg.precision in ("auto", "bf16") else nullcontext())
    mixture = make_mixture(spec, [len(source.train) for source in sources])
    best_dir, history, window = cfg.output_dir / "best", [], _Terms()
    best_step, best_objective, best_metrics = -1, float("-inf"), {}
    for step in range(1, cfg.steps + 1):
        started = time.perf_counter()
        parts = mixture.indices(step - 1)
        for k, (source, indices) in enumerate(zip(sources, parts)):
            if not indices:  # the draw gave this task no example this step
                continue
            items = [source.train[i] for i in indices]
            batch = {key: v.to(device) for key, v in train_batch(items, backbone, source.task.is_regression).items()}
            with autocast:
                terms = task_terms(student, k, source, batch, spec)
            total = mpt_source_loss(terms["loss"], terms["kl"], terms["mse"], spec.distill.weight)
            (total * len(indices) / cfg.batch_size).backward()
            window.add(source.task.name, {key: v.item() for key, v in terms.items()}, len(indices))
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.seconds += time.perf_counter() - started
        window.steps += 1
        if step % cfg.eval_every and step != cfg.steps:
            continue
        report = {"step": float(step), **window.flush(), **_evaluate(student, backbone, sources, cfg, device, autocast)}
        report["objective"] = _mean(report, sources, lambda t: t.metric_names[0])
        report["paper_metric"] = _mean(report, sources, lambda t: t.paper_metric)
        improved = report["objective"] > best_objective
        if improved:
            best_step, best_objective = step, report["objective"]
            best_metrics = {k: v for k, v in report.items() if k.startswith("eval_")}
            save_adapter(student, best_dir, backbone.name, backbone.revision, task="+".join(spec.task_names))
        history.append(report)
        reporter(report, best_dir if improved else None)
    return SourceResult(best_dir, teacher_dirs, best_step, best_metrics, history)


def make_mixture(spec: SourceSpec, sizes: list[int]) -> MixtureBatches:
    """The step-by-step task mixture of the source stage (`mixing`)."""
    rates = None if spec.mixing.strategy == "balanced" else mixing_rates(sizes, spec.mixing.size_cap)
    return MixtureBatches(sizes, spec.train.batch_size, spec.train.seed, rates)


def _mean(report: dict[str, float], sources: list[SourceTask], metric) -> float:
    """The mean over the tasks of each task's `metric(task)` validation score."""
    return sum(report[f"eval_{s.task.name}_{metric(s.task)}"] for s in sources) / len(sources)


def _source_task(spec: SourceSpec, index: int, backbone: Backbone, teacher_dir: Path,
                 device: torch.device) -> SourceTask:
    task_cfg, cfg = spec.source_tasks[index], spec.train
    task = get_task(task_cfg.name)
    splits = load_splits(task_cfg)
    s = spec.method.max_length
    teacher = load_adapter(backbone, teacher_dir).to(device)
    head = {k: v.to(device) for k, v in read_tensors(teacher_dir).items() if k in teacher.head_names}
    return SourceTask(task, encode(splits.train, backbone, task, s, cfg.max_target_length),
                      encode(splits.validation, backbone, task, s, cfg.max_target_length), teacher, head)


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


def _evaluate(student: MPTModel, backbone: Backbone, sources: list[SourceTask], cfg, device, autocast) -> dict[str, float]:
    """Each task's validation metrics with its own prompt (and head)."""
    metrics = {}
    for k, source in enumerate(sources):
        _use_head(student, source.head)
        with student.for_task(k), autocast:
            scores = evaluate(student, backbone, source.task, source.validation, cfg.eval_batch_size,
                              cfg.max_new_tokens, device)
        metrics.update({f"eval_{source.task.name}_{name}": v for name, v in scores.items()})
    return metrics


class _Terms:
    """Per-task means of the loss terms since the last evaluation, and each task's share of the examples."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.examples: dict[str, int] = {}
        self.seconds, self.steps = 0.0, 0

    def add(self, task: str, terms: dict[str, float], examples: int) -> None:
        for name, value in terms.items():
            key = f"{name}_{task}"
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.examples[task] = self.examples.get(task, 0) + examples

    def flush(self) -> dict[str, float]:
        out = {key: total / self.counts[key] for key, total in self.sums.items()}
        losses = [v for k, v in out.items() if k.startswith("loss_")]
        out["train_loss"] = sum(losses) / max(len(losses), 1)
        seen = max(sum(self.examples.values()), 1)
        out.update({f"mix_{task}": n / seen for task, n in self.examples.items()})
        out["step_time_s"] = self.seconds / max(self.steps, 1)
        self.__init__()
        return out
