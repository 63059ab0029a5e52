"""Summed losses with their item counts, so the mean is over the global batch whatever the worker split."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from deptune.methods.base import IGNORE_INDEX, PromptModel


def loss_sum(model: PromptModel, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """(sum of per-item losses, number of items): label tokens for seq2seq/causal, examples for encoders."""
    out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    logits, labels = out.logits.float(), batch["labels"]
    if model.family == "encoder":
        if logits.shape[-1] == 1:  # regression (STS-B)
            return F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum"), labels.numel()
        return F.cross_entropy(logits, labels, reduction="sum"), labels.numel()
    if model.family == "causal":  # logits cover prompt + input; predict token t+1 from t
        logits = logits[:, model.config.prompt_length:-1]
        labels = labels[:, 1:]
    count = int((labels != IGNORE_INDEX).sum())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum"), count
