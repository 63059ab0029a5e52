"""The one training loop: in a plain process (`deptune train --local`) and, later, on every Ray Train worker.

Steps: seed, load task + frozen backbone, wrap in the method, then optimise the adapter with two (three
for encoders) AdamW groups under linear warm-up/decay; every `eval_every` steps score the validation
split, keep the best adapter by the task's first metric (never by loss), and report metrics.
"""

from __future__ import annotations

import random
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from deptune.config import RunSpec
from deptune.methods import PromptModel, build_model
from deptune.methods.base import IGNORE_INDEX
from deptune.methods.io import load_adapter_tensors, save_adapter
from deptune.models import Backbone, load_backbone
from deptune.tasks import get_task
from deptune.tasks.loading import load_splits
from deptune.train.config import TrainConfig
from deptune.train.data import GlobalBatches, encode, train_batch
from deptune.train.evaluate import evaluate
from deptune.train.loss import loss_sum

Reporter = Callable[[dict[str, float], Path | None], None]
"""Called at every evaluation with the metrics and, when the adapter improved, its directory."""


@dataclass
class TrainResult:
    best_step: int
    best_metrics: dict[str, float]  # validation metrics at best_step
    test_metrics: dict[str, float]
    adapter_dir: Path
    trainable_params: int
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(train: TrainConfig) -> torch.device:
    if train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(model: PromptModel, train: TrainConfig) -> torch.optim.AdamW:
    """One AdamW group per learning rate: prompt, low-rank pair (DePT), head (encoders)."""
    rates = {"prompt": train.lr_prompt, "lowrank": train.lr_lowrank, "head": train.lr_head}
    groups = [{"params": params, "lr": rates[name], "name": name}
              for name, params in model.parameter_groups().items() if params]
    return torch.optim.AdamW(groups, eps=train.adam_eps, weight_decay=train.weight_decay)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak allocated by torch; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def print_reporter(metrics: dict[str, float], adapter_dir: Path | None) -> None:
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("trainable_params",))
    print(f"[eval] {shown}{'  *best' if adapter_dir else ''}", flush=True)


def train(spec: RunSpec, reporter: Reporter = print_reporter) -> TrainResult:
    cfg = spec.train
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    task = get_task(spec.task.name)
    splits = load_splits(spec.task)  # bad data fails here, before the backbone is loaded
    backbone = load_backbone(spec.backbone, num_labels=max(1, len(task.label_names)))
    model = build_model(backbone, spec.method).to(device)
    s = model.config.max_length
    train_items = encode(splits.train, backbone, task, s, cfg.max_target_length)
    val_items = encode(splits.validation, backbone, task, s, cfg.max_target_length)
    batches = GlobalBatches(len(train_items), cfg.batch_size, cfg.seed)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and cfg.precision in ("auto", "bf16") else nullcontext())
    best_dir = cfg.output_dir / "best"
    best: dict[str, float] = {}
    best_step, history = -1, []
    window = _Window()
    model.train()
    for step, indices in zip(range(1, cfg.steps + 1), batches.iterate(0)):
        window.start()
        batch = {k: v.to(device) for k, v in
                 train_batch([train_items[i] for i in indices], backbone, task.is_regression).items()}
        with autocast:
            total, count = loss_sum(model, batch)
        loss = total / max(count, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.stop(loss.item(), dataset_tokens(batch, model.family))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with autocast:
                metrics = evaluate(model, backbone, task, val_items, cfg.eval_batch_size, cfg.max_new_tokens, device)
            objective = metrics[task.metric_names[0]]
            improved = best_step < 0 or objective > best[task.metric_names[0]]
            if improved:
                best, best_step = metrics, step
                save_adapter(model, best_dir, backbone.name, backbone.revision, task.name)
            report = {"step": float(step), "objective": objective, **{f"eval_{k}": v for k, v in metrics.items()},
                      **window.flush(), "peak_memory_mb": peak_memory_mb(device),
                      "trainable_params": float(model.trainable_parameter_count()),
                      "best_objective": best[task.metric_names[0]], "best_step": float(best_step)}
            history.append(report)
            reporter(report, best_dir if improved else None)
    test_metrics = _score_best(model, backbone, task, splits.test, best_dir, spec) if cfg.evaluate_test else {}
    return TrainResult(best_step, best, test_metrics, best_dir, model.trainable_parameter_count(), history)


def dataset_tokens(batch: dict[str, torch.Tensor], family: str) -> int:
    """Real tokens of the batch (source, plus seq2seq targets); causal inputs already hold the answer."""
    tokens = int(batch["attention_mask"].sum())
    if family == "seq2seq":
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
    return tokens


def _score_best(model: PromptModel, backbone: Backbone, task, examples, best_dir: Path, spec: RunSpec) -> dict[str, float]:
    cfg = spec.train
    load_adapter_tensors(model, best_dir)
    items = encode(examples, backbone, task, model.config.max_length, cfg.max_target_length)
    device = next(model.parameters()).device
    return evaluate(model, backbone, task, items, cfg.eval_batch_size, cfg.max_new_tokens, device)


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
