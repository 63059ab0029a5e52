"""Summed losses and their item counts, so the mean is over the global batch whatever the worker split;
and the distillation terms of MPT's source stage."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from deptune.methods.model import IGNORE_INDEX, PromptModel


def item_count(batch: dict[str, Tensor], family: str) -> int:
    """What the loss averages over: label tokens (seq2seq, causal) or examples (encoders)."""
    if family == "encoder":
        return len(batch["labels"])
    labels = batch["labels"][:, 1:] if family == "causal" else batch["labels"]  # causal: token 0 is never predicted
    return int((labels != IGNORE_INDEX).sum())


def loss_sum(model: PromptModel, batch: dict[str, Tensor], forward: Callable | None = None) -> Tensor:
    """Sum of per-item losses; `forward` is the model's DDP wrapper on a multi-worker run."""
    out = (forward or model)(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    return task_loss_sum(model, out.logits, batch["labels"])


def task_loss_sum(model: PromptModel, logits: Tensor, labels: Tensor) -> Tensor:
    logits, labels = scored(model, logits, labels)
    if model.family == "encoder" and logits.shape[-1] == 1:  # regression (STS-B)
        return F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
    return F.cross_entropy(logits, labels, reduction="sum")


def scored(model: PromptModel, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, labels) of the scored items only: one row per example (encoders) or per label token."""
    logits = logits.float()
    if model.family == "encoder":
        return logits, labels
    if model.family == "causal":  # logits cover prompt + input; predict token t+1 from t
        logits, labels = logits[:, model.config.prompt_length:-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def distillation_terms(model: PromptModel, student, teacher, labels: Tensor, attention_mask: Tensor,
                       temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(KL, MSE), each a mean: KL(teacher || student) of the scored output distributions (times T^2), and
    the MSE between the last-layer hidden states of the real input tokens (seq2seq: the encoder's).
    Teacher and student prompts have the same length, so the input tokens sit at the same positions."""
    s_logits, _ = scored(model, student.logits, labels)
    t_logits, _ = scored(model, teacher.logits, labels)
    if s_logits.shape[-1] == 1:  # regression: match the predicted values
        kl = F.mse_loss(s_logits, t_logits)
    else:
        kl = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.log_softmax(t_logits / temperature, -1),
                      log_target=True, reduction="batchmean") * temperature ** 2
    l = model.config.prompt_length
    s_hidden, t_hidden = (last_hidden(model, out)[:, l:l + attention_mask.shape[1]] for out in (student, teacher))
    mask = attention_mask.unsqueeze(-1).to(s_hidden.dtype)
    mse = ((s_hidden.float() - t_hidden.float()) ** 2 * mask).sum() / (mask.sum() * s_hidden.shape[-1])
    return kl, mse


def last_hidden(model: PromptModel, out) -> Tensor:
    return out.encoder_last_hidden_state if model.family == "seq2seq" else out.hidden_states[-1]
