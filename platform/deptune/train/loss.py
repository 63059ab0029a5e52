"""Summed losses and their item counts, so the mean is over the global batch whatever the worker split."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from deptune.methods.base import IGNORE_INDEX, PromptModel


def item_count(batch: dict[str, Tensor], family: str) -> int:
    """What the loss averages over: label tokens (seq2seq, causal) or examples (encoders)."""
    if family == "encoder":
        return len(batch["labels"])
    labels = batch["labels"][:, 1:] if family == "causal" else batch["labels"]  # causal: token 0 is never predicted
    return int((labels != IGNORE_INDEX).sum())


def loss_sum(model: PromptModel, batch: dict[str, Tensor], forward: Callable | None = None) -> Tensor:
    """Sum of per-item losses; `forward` is the model's DDP wrapper on a multi-worker run."""
    out = (forward or model)(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    logits, labels = out.logits.float(), batch["labels"]
    if model.family == "encoder":
        if logits.shape[-1] == 1:  # regression (STS-B)
            return F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
        return F.cross_entropy(logits, labels, reduction="sum")
    if model.family == "causal":  # logits cover prompt + input; predict token t+1 from t
        logits = logits[:, model.config.prompt_length:-1]
        labels = labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
