"""The one training loop: in a plain process (`deptune train --local`) and on every Ray Train worker.

Seed, load task + frozen backbone, wrap in the method, then optimise the adapter with one AdamW group per
learning rate under linear warm-up/decay. Step k trains on global batch k whatever the worker count
(each rank takes its slice, losses are normalised by the global item count). Every `eval_every` steps the
validation split is scored across all ranks, the best adapter is kept by the task's first metric (never
by loss), and the session gets the metrics plus a resumable checkpoint.
"""

from __future__ import annotations

import math
import random
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_linear_schedule_with_warmup

from deptune.train.spec import RunSpec
from deptune.methods.model import PromptModel
from deptune.methods.adapters import build_model
from deptune.backbones import Backbone, load_backbone
from deptune.tasks.base import Task
from deptune.tasks.registry import get_task
from deptune.tasks.loading import load_splits
from deptune.train.checkpoint import Progress, load_checkpoint, rng_state, save_checkpoint
from deptune.train.cache import ProcessCache, Shared
from deptune.train.config import TrainConfig
from deptune.train.data import Encoded, GlobalBatches, train_batch
from deptune.train.evaluate import evaluate
from deptune.train.loss import item_count, loss_sum
from deptune.train.session import (LocalSession, Reporter, Session, all_gather, all_reduce_sum,
                                   broadcast_parameters, distributed, print_reporter)


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
    """One AdamW group per learning rate: group `x` of the model trains at `train.lr_x` (prompt, lowrank:
    DePT's A, B or MPT's u, v; head: an encoder's classification head)."""
    groups = [{"params": params, "lr": getattr(train, f"lr_{name}"), "name": name}
              for name, params in model.parameter_groups().items() if params]
    return torch.optim.AdamW(groups, eps=train.adam_eps, weight_decay=train.weight_decay)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak allocated by torch; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _load(spec: RunSpec, task: Task, device: torch.device, cache: ProcessCache | None) -> Shared:
    """The backbone and data: from the process's cache (a reused trial actor) or loaded for this run."""
    num_labels = max(1, len(task.label_names))
    if cache is not None:
        return cache.checkout(spec.backbone, spec.task, num_labels, spec.train.seed, device)
    splits = load_splits(spec.task)  # bad data fails here, before the backbone is loaded
    backbone = load_backbone(spec.backbone, num_labels=num_labels)
    return Shared(splits, backbone, (), {})


def train(spec: RunSpec, reporter: Reporter = print_reporter, session: Session | None = None,
          cache: ProcessCache | None = None) -> TrainResult:
    """Train one run; `cache` (a reused Tune trial actor's) supplies the frozen backbone and the data."""
    cfg = spec.train
    session = session or LocalSession(cfg.output_dir, resolve_device(cfg), reporter)
    rank, world, device = session.rank, session.world_size, session.device
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size ({cfg.batch_size}) must be divisible by resources.workers ({world})")
    seed_everything(cfg.seed)  # the same head and adapter init on every rank
    task = get_task(spec.task.name)
    shared = _load(spec, task, device, cache)
    splits, backbone = shared.splits, shared.backbone
    sizes = {"examples_train": len(splits.train), "examples_validation": len(splits.validation),
             "examples_test": len(splits.test)}
    if rank == 0:
        print("[data] " + " ".join(f"{k.removeprefix('examples_')}={v}" for k, v in sizes.items()), flush=True)
    model = build_model(backbone, spec.method).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    broadcast_parameters(trainable)
    s = model.config.max_length
    train_items = shared.split("train", task, s, cfg.max_target_length)
    val_items = shared.split("validation", task, s, cfg.max_target_length).all()
    batches = GlobalBatches(len(splits.train), cfg.batch_size, cfg.seed)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    torch.manual_seed(cfg.seed + 1000 * rank)  # dropout differs across ranks
    restore = session.restore_dir()
    progress = load_checkpoint(restore, model, optimizer, scheduler, rank, world) if restore else Progress()
    forward = (DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       forward_sync_buffers=False, init_sync=False) if distributed() else model)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and cfg.precision in ("auto", "bf16") else nullcontext())
    window, history = _Window(), []
    model.train()
    for step in range(progress.step + 1, cfg.steps + 1):
        window.start()
        items = train_items.take(batches.indices(step - 1, rank, world))  # this rank's shard only
        loss, tokens = _train_step(model, forward, backbone, task, items, optimizer, scheduler, cfg, device, autocast)
        if not math.isfinite(loss):  # the same on every rank (all-reduced); retrying would diverge again
            session.report({"step": float(step), "diverged_at_step": float(step)}, None, False)
            return TrainResult(progress.best_step, progress.best_metrics, {}, None,
                               model.trainable_parameter_count(), history, diverged_at_step=step)
        window.stop(loss, tokens)
        progress.step = step
        if step % cfg.eval_every and step != cfg.steps:
            continue
        started = time.perf_counter()
        with autocast:
            metrics = evaluate(model, backbone, task, val_items, cfg.eval_batch_size, cfg.max_new_tokens, device)
        latency_ms = 1000 * (time.perf_counter() - started) / max(len(splits.validation), 1)
        objective = metrics[task.metric_names[0]]
        improved = progress.improve(step, objective, metrics, model)
        report = {"step": float(step), "objective": objective, "paper_metric": metrics[task.paper_metric],
                  **{f"eval_{k}": v for k, v in metrics.items()},
                  **window.flush(), "eval_latency_ms": latency_ms, "peak_memory_mb": peak_memory_mb(device),
                  "trainable_params": float(model.trainable_parameter_count()),
                  "best_objective": progress.best_objective, "best_step": float(progress.best_step),
                  **{k: float(v) for k, v in sizes.items()}}
        if step == cfg.steps and cfg.evaluate_test and splits.test:
            test_items = shared.split("test", task, s, cfg.max_target_length).all()
            test = _score_best(model, backbone, task, test_items, progress, cfg, device, autocast)
            report.update({f"test_{k}": v for k, v in test.items()}, test_paper_metric=test[task.paper_metric])
        history.append(report)
        _checkpoint_and_report(session, report, improved, model, optimizer, scheduler, progress, backbone, task)
    test = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")} if history else {}
    best_dir = getattr(session, "best_dir", None)
    return TrainResult(progress.best_step, progress.best_metrics, test, best_dir, model.trainable_parameter_count(),
                       history)


def _train_step(model: PromptModel, forward, backbone: Backbone, task: Task, items: list[Encoded], optimizer,
                scheduler, cfg: TrainConfig, device: torch.device, autocast) -> tuple[float, int]:
    """One optimizer step over this rank's slice of the global batch, in micro-batches."""
    n_micro = -(-len(items) // cfg.micro_batch_size) if cfg.micro_batch_size else 1
    chunks = [items[i::n_micro] for i in range(n_micro)]
    micro = [{k: v.to(device) for k, v in train_batch(c, backbone, task.is_regression).items()} for c in chunks]
    local_count = sum(item_count(b, model.family) for b in micro)
    local_tokens = sum(dataset_tokens(b, model.family) for b in micro)
    global_count, global_tokens = all_reduce_sum([local_count, local_tokens], device)
    scale = (torch.distributed.get_world_size() if distributed() else 1) / max(global_count, 1)  # DDP averages
    local_loss = torch.zeros((), device=device)
    for i, batch in enumerate(micro):
        sync = nullcontext() if i == n_micro - 1 or forward is model else forward.no_sync()
        with sync, autocast:
            total = loss_sum(model, batch, forward)
        (total * scale).backward()
        local_loss += total.detach()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    (global_loss,) = all_reduce_sum([local_loss.item()], device)  # one device sync per step
    return global_loss / max(global_count, 1), int(global_tokens)


def dataset_tokens(batch: dict[str, torch.Tensor], family: str) -> int:
    """Real tokens of the batch (source, plus seq2seq targets); causal inputs already hold the answer."""
    tokens = int(batch["attention_mask"].sum())
    if family == "seq2seq":
        tokens += item_count(batch, family)
    return tokens


def _score_best(model: PromptModel, backbone: Backbone, task: Task, items: list[Encoded], progress: Progress,
                cfg: TrainConfig, device: torch.device, autocast) -> dict[str, float]:
    """Test metrics of the best adapter; the current tensors are put back (the checkpoint must hold them)."""
    tensors = model.adapter_tensors()
    current = {k: v.detach().clone() for k, v in tensors.items()}
    with torch.no_grad():
        for key, param in tensors.items():
            param.copy_(progress.best_adapter[key])
        with autocast:
            metrics = evaluate(model, backbone, task, items, cfg.eval_batch_size, cfg.max_new_tokens, device)
        for key, param in tensors.items():
            param.copy_(current[key])
    return metrics


def _checkpoint_and_report(session: Session, report: dict[str, float], improved: bool, model: PromptModel,
                           optimizer, scheduler, progress: Progress, backbone: Backbone, task: Task) -> None:
    """Rank 0 writes the checkpoint (every rank's RNG stream included); every rank reports."""
    rng_states = all_gather(rng_state())
    if session.rank != 0:
        session.report(report, None, improved)
        return
    with tempfile.TemporaryDirectory(prefix="deptune-ckpt-") as tmp:
        save_checkpoint(Path(tmp), model, optimizer, scheduler, progress, rng_states, backbone.name,
                        backbone.revision, task.name)
        session.report(report, Path(tmp), improved)


class _Window:
    """Throughput since the last evaluation: dataset tokens/s (prompt tokens not counted), step time, loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.tokens = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self, loss: float, tokens: int) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.losses.append(loss)
        self.tokens += tokens

    def flush(self) -> dict[str, float]:
        n = max(len(self.losses), 1)
        out = {"train_loss": sum(self.losses) / n, "step_time_s": self.seconds / n,
               "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0}
        self.__init__()
        return out
