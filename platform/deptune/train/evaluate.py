"""Scoring a split: greedy generation + string match (seq2seq, causal), head argmax (encoders),
split across the ranks of a multi-worker run."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from deptune.backbones import Backbone
from deptune.methods.model import PromptModel
from deptune.tasks.base import Task
from deptune.train.data import Encoded, eval_batch
from deptune.train.session import all_gather, distributed


@torch.no_grad()
def predict(
    model: PromptModel,
    backbone: Backbone,
    task: Task,
    items: Sequence[Encoded],
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
) -> list[str]:
    """Verbalised predictions, stripped, in the order of `items`."""
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in eval_batch(items[start : start + batch_size], backbone).items()}
        if model.family == "encoder":
            logits = model(**batch).logits.float()
            if task.is_regression:
                predictions += [f"{v:.4f}" for v in logits.squeeze(-1).tolist()]
            else:
                predictions += [task.label_names[i] for i in logits.argmax(-1).tolist()]
        else:
            tokens = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=backbone.tokenizer.pad_token_id
            )
            predictions += [t.strip() for t in backbone.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    model.train(was_training)
    return predictions


def evaluate(
    model: PromptModel,
    backbone: Backbone,
    task: Task,
    items: Sequence[Encoded],
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
) -> dict[str, float]:
    """Each rank predicts its slice; the metrics cover the whole split, on every rank."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)
    mine = predict(model, backbone, task, items[rank::world], batch_size, max_new_tokens, device)
    slices = all_gather(mine)
    predictions = [slices[i % world][i // world] for i in range(len(items))]
    return task.compute_metrics(predictions, [e.target for e in items])
