"""The one training loop: in a plain process (`--local`), in a Tune trial actor and on every Ray Train
worker; for one task's run and for MPT's multitask source stage (a `Workload` each).

Seed, load task + frozen backbone, wrap in the method, then optimise the adapter with one AdamW group per
learning rate under linear warm-up/decay. Step k trains on global batch k whatever the worker count
(each rank takes its slice, losses are normalised by the global item count, and the adapter's gradients
are summed across ranks by one all-reduce: kilobytes, so no DDP bucketing is needed, and a workload may
run several forward passes a step, as MPT's per-task parts do). Every `eval_every` steps the validation
split is scored across all ranks, the best adapter is kept by the objective (never the loss), and the
session gets the metrics plus a resumable checkpoint.
"""

from __future__ import annotations

import math
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from deptune.backbones import Backbone, load_backbone
from deptune.methods.adapters import build_model
from deptune.methods.model import PromptModel
from deptune.tasks.base import Task
from deptune.tasks.catalog import get_task
from deptune.tasks.loading import load_splits
from deptune.train.cache import ProcessCache, Shared
from deptune.train.checkpoint import Progress, load_checkpoint, rng_state, save_checkpoint
from deptune.train.config import IMPROVED_AT, RESUMED_FROM, SELECTED_BY, TrainConfig
from deptune.train.data import Encoded, GlobalBatches, train_batch
from deptune.train.evaluate import evaluate
from deptune.train.loss import item_count, loss_sum
from deptune.train.session import (
    LocalSession,
    Reporter,
    Session,
    all_gather,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_parameters,
    print_reporter,
)
from deptune.train.spec import RunSpec


@dataclass
class TrainResult:
    best_step: int
    best_metrics: dict[str, float]  # validation metrics at best_step
    test_metrics: dict[str, float]
    adapter_dir: Path | None
    trainable_params: int
    history: list[dict[str, float]] = field(default_factory=list)
    diverged_at_step: int | None = None  # training stopped: the loss became NaN or infinite


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(train: TrainConfig) -> torch.device:
    if train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(model: PromptModel, train: TrainConfig) -> torch.optim.AdamW:
    """One AdamW group per learning-rate group of the method: group `x` trains at `train.lr_x`, else at the
    method's default (prompt; lowrank: DePT's A, B or MPT's u, v; head: an encoder's classification head)."""
    rates = model.config.learning_rates(train.lr)
    groups = [
        {"params": params, "lr": rates[name], "name": name}
        for name, params in model.parameter_groups().items()
        if params
    ]
    return torch.optim.AdamW(groups, eps=train.adam_eps, weight_decay=train.weight_decay)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak allocated by torch; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class Workload(Protocol):
    """What the loop trains: one task (`TaskWorkload`) or MPT's source mixture (`train/multitask.py`).

    The loop owns the optimizer, the schedule, the gradient all-reduce, divergence, evaluation timing, the
    best adapter, checkpoints and reports; a workload owns its data, its loss and its scores."""

    model: PromptModel
    backbone: Backbone
    adapter_task: str  # what a saved adapter is for (the checkpoint's `task`)
    constants: dict[str, float]  # reported with every evaluation (the split sizes)

    def backward(self, step: int, rank: int, world: int, device: torch.device, autocast) -> StepLoss: ...

    def evaluate(self, device: torch.device, autocast) -> Scores: ...

    def test(self, progress: Progress, device: torch.device, autocast) -> dict[str, float]: ...


@dataclass
class StepLoss:
    """One step's backward pass on this rank: its part of the global mean loss (all-reduced by the loop),
    its dataset tokens, and named terms to average between evaluations (this rank's values)."""

    loss: float
    tokens: int
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class Scores:
    """An evaluation: the objective that picks the best adapter, the paper's metric, every metric by name."""

    objective: float
    paper_metric: float
    metrics: dict[str, float]


class TaskWorkload:
    """One task's run: its global batches in micro-batches, its validation (and test) split."""

    def __init__(self, spec: RunSpec, rank: int, device: torch.device, cache: ProcessCache | None) -> None:
        cfg = self.cfg = spec.train
        self.task = get_task(spec.task.name)
        self.adapter_task = self.task.name
        self.shared = _load(spec, self.task, device, cache)
        splits, self.backbone = self.shared.splits, self.shared.backbone
        self.constants = {
            "examples_train": float(len(splits.train)),
            "examples_validation": float(len(splits.validation)),
            "examples_test": float(len(splits.test)),
        }
        if rank == 0:
            print(
                "[data] " + " ".join(f"{k.removeprefix('examples_')}={v:.0f}" for k, v in self.constants.items()),
                flush=True,
            )
        self.model = build_model(self.backbone, spec.method).to(device)
        self.s, self.rule = self.model.config.max_length, self.model.config.causal_rule
        self.train_items = self.shared.split("train", self.task, self.s, cfg.max_target_length, self.rule)
        self.val_items = self.shared.split("validation", self.task, self.s, cfg.max_target_length, self.rule).all()
        self.batches = GlobalBatches(len(splits.train), cfg.batch_size, cfg.rng_seed)

    def backward(self, step: int, rank: int, world: int, device: torch.device, autocast) -> StepLoss:
        """This rank's slice of global batch `step`, in micro-batches, normalised by the global item count."""
        model, cfg = self.model, self.cfg
        items = self.train_items.take(self.batches.indices(step - 1, rank, world))
        n_micro = -(-len(items) // cfg.micro_batch_size) if cfg.micro_batch_size else 1
        micro = [
            {k: v.to(device) for k, v in train_batch(items[i::n_micro], self.backbone, self.task.is_regression).items()}
            for i in range(n_micro)
        ]
        local_count = sum(item_count(b, model.family) for b in micro)
        local_tokens = sum(dataset_tokens(b, model.family) for b in micro)
        (global_count,) = all_reduce_sum([local_count], device)
        local_loss = torch.zeros((), device=device)
        for batch in micro:
            with autocast:
                total = loss_sum(model, batch)
            (total / max(global_count, 1)).backward()
            local_loss += total.detach()
        return StepLoss(local_loss.item() / max(global_count, 1), local_tokens)

    def evaluate(self, device: torch.device, autocast) -> Scores:
        metrics = self._score(self.val_items, device, autocast)
        return Scores(metrics[self.task.metric_names[0]], metrics[self.task.paper_metric], metrics)

    def test(self, progress: Progress, device: torch.device, autocast) -> dict[str, float]:
        """The best adapter's test metrics (`train.evaluate_test`, a test split)."""
        if not (self.cfg.evaluate_test and self.shared.splits.test):
            return {}
        items = self.shared.split("test", self.task, self.s, self.cfg.max_target_length, self.rule).all()
        test = score_best(self.model, progress, lambda: self._score(items, device, autocast))
        return {**{f"test_{k}": v for k, v in test.items()}, "test_paper_metric": test[self.task.paper_metric]}

    def _score(self, items: list[Encoded], device: torch.device, autocast) -> dict[str, float]:
        with autocast:
            return evaluate(
                self.model, self.backbone, self.task, items, self.cfg.eval_batch_size, self.cfg.max_new_tokens, device
            )


def _load(spec: RunSpec, task: Task, device: torch.device, cache: ProcessCache | None) -> Shared:
    """The backbone and data: from the process's cache (a reused trial actor) or loaded for this run."""
    num_labels = max(1, len(task.label_names))
    if cache is not None:
        return cache.checkout(spec.backbone, spec.task, num_labels, spec.train.seed, device)
    splits = load_splits(spec.task)  # bad data fails here, before the backbone is loaded
    backbone = load_backbone(spec.backbone, num_labels=num_labels)
    return Shared(splits, backbone, (), {})


def train(
    spec: RunSpec,
    reporter: Reporter = print_reporter,
    session: Session | None = None,
    cache: ProcessCache | None = None,
) -> TrainResult:
    """Train one run; `cache` (a reused Tune trial actor's) supplies the frozen backbone and the data."""
    cfg = spec.train
    session = session or LocalSession(cfg.output_dir, resolve_device(cfg), reporter)
    if cfg.batch_size % session.world_size:
        raise ValueError(
            f"train.batch_size ({cfg.batch_size}) must be divisible by resources.workers ({session.world_size})"
        )
    seed_everything(cfg.rng_seed)  # the same head and adapter init on every rank
    return run_loop(TaskWorkload(spec, session.rank, session.device, cache), cfg, session)


def run_loop(work: Workload, cfg: TrainConfig, session: Session) -> TrainResult:
    """Optimise `work.model`'s adapter (seeded, built the same on every rank) for `cfg.steps` steps,
    resuming from the session's checkpoint if it has one."""
    rank, world, device, model = session.rank, session.world_size, session.device, work.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    broadcast_parameters(trainable)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    torch.manual_seed(cfg.rng_seed + 1000 * rank)  # dropout differs across ranks
    restore = session.restore_dir()
    progress = load_checkpoint(restore, model, optimizer, scheduler, rank, world) if restore else Progress()
    resumed_from = float(progress.step)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.precision in ("auto", "bf16")
        else nullcontext()
    )
    window, history = _Window(), []
    model.train()
    for step in range(progress.step + 1, cfg.steps + 1):
        window.start()
        stats = work.backward(step, rank, world, device, autocast)
        all_reduce_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss, tokens = all_reduce_sum([stats.loss, stats.tokens], device)  # one device sync per step
        if not math.isfinite(loss):  # the same on every rank (all-reduced); retrying would diverge again
            session.report({"step": float(step), "diverged_at_step": float(step)}, None, False)
            return TrainResult(
                progress.best_step,
                progress.best_metrics,
                {},
                None,
                model.trainable_parameter_count(),
                history,
                diverged_at_step=step,
            )
        window.stop(loss, int(tokens), stats.terms)
        progress.step = step
        if step % cfg.eval_every and step != cfg.steps:
            continue
        started = time.perf_counter()
        scores = work.evaluate(device, autocast)
        latency_ms = 1000 * (time.perf_counter() - started) / max(work.constants.get("examples_validation", 1), 1)
        improved = progress.improve(step, scores.objective, scores.metrics, model)
        report = {
            "step": float(step),
            SELECTED_BY: scores.objective,
            "paper_metric": scores.paper_metric,
            **{f"eval_{k}": v for k, v in scores.metrics.items()},
            **window.flush(),
            "eval_latency_ms": latency_ms,
            "peak_memory_mb": peak_memory_mb(device),
            "trainable_params": float(model.trainable_parameter_count()),
            "torch_threads": float(torch.get_num_threads()),
            "best_objective": progress.best_objective,
            "best_step": float(progress.best_step),
            IMPROVED_AT: float(step) if improved else 0.0,
            RESUMED_FROM: resumed_from,
            **work.constants,
        }
        if step == cfg.steps:
            report.update(work.test(progress, device, autocast))
        history.append(report)
        _checkpoint_and_report(session, report, improved, model, optimizer, scheduler, progress, work)
    test = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")} if history else {}
    best_dir = getattr(session, "best_dir", None)
    return TrainResult(
        progress.best_step, progress.best_metrics, test, best_dir, model.trainable_parameter_count(), history
    )


def dataset_tokens(batch: dict[str, torch.Tensor], family: str) -> int:
    """Real tokens of the batch (source, plus seq2seq targets); causal inputs already hold the answer."""
    tokens = int(batch["attention_mask"].sum())
    if family == "seq2seq":
        tokens += item_count(batch, family)
    return tokens


def score_best(model: PromptModel, progress: Progress, score: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`score()` with the best adapter's tensors in place; the current ones are put back (the checkpoint must
    hold them)."""
    tensors = model.adapter_tensors()
    current = {k: v.detach().clone() for k, v in tensors.items()}
    with torch.no_grad():
        for key, param in tensors.items():
            param.copy_(progress.best_adapter[key])
        metrics = score()
        for key, param in tensors.items():
            param.copy_(current[key])
    return metrics


def _checkpoint_and_report(
    session: Session,
    report: dict[str, float],
    improved: bool,
    model: PromptModel,
    optimizer,
    scheduler,
    progress: Progress,
    work: Workload,
) -> None:
    """Rank 0 writes the checkpoint (every rank's RNG stream included); every rank reports."""
    rng_states = all_gather(rng_state())
    if session.rank != 0:
        session.report(report, None, improved)
        return
    with tempfile.TemporaryDirectory(prefix="deptune-ckpt-") as tmp:
        save_checkpoint(
            Path(tmp),
            model,
            optimizer,
            scheduler,
            progress,
            rng_states,
            work.backbone.name,
            work.backbone.revision,
            work.adapter_task,
        )
        session.report(report, Path(tmp), improved)


class _Window:
    """Since the last evaluation: dataset tokens/s (prompt tokens not counted), step time, the mean loss and
    the mean of each workload term over the steps that had it."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.tokens = 0
        self.seconds = 0.0
        self.terms: dict[str, list[float]] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self, loss: float, tokens: int, terms: dict[str, float]) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.losses.append(loss)
        self.tokens += tokens
        for name, value in terms.items():
            self.terms.setdefault(name, []).append(value)

    def flush(self) -> dict[str, float]:
        n = max(len(self.losses), 1)
        out = {
            "train_loss": sum(self.losses) / n,
            "step_time_s": self.seconds / n,
            "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
            **{name: sum(values) / len(values) for name, values in self.terms.items()},
        }
        self.__init__()
        return out
