"""Summed losses and their item counts, so the mean is over the global batch whatever the worker split;
and the terms of MPT's source stage, L_PLM + lambda * (L_logits + L_hidden)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deptune.methods.model import IGNORE_INDEX, PromptModel


def item_count(batch: dict[str, Tensor], family: str) -> int:
    """What the loss averages over: label tokens (seq2seq, causal) or examples (encoders)."""
    if family == "encoder":
        return len(batch["labels"])
    labels = batch["labels"][:, 1:] if family == "causal" else batch["labels"]  # causal: token 0 is never predicted
    return int((labels != IGNORE_INDEX).sum())


def loss_sum(model: PromptModel, batch: dict[str, Tensor]) -> Tensor:
    """Sum of per-item losses."""
    out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
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
        logits, labels = logits[:, model.config.prompt_length : -1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def distillation_terms(
    model: PromptModel, student, teacher, labels: Tensor, attention_mask: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(L_logits, L_hidden) of MPT's source stage, each a mean.

    L_logits: KL(teacher || student) of the scored output distributions, times T^2 (regression: the MSE of
    the predicted values). L_hidden: the MSE between teacher's and student's last-layer hidden states over
    the real input tokens (prompt positions excluded: both prompts have length l, so the input sits at the
    same positions); seq2seq adds the same MSE over the decoder's target tokens, so encoder and decoder
    both count (each a mean over its own tokens and dimensions).
    """
    s_logits, _ = scored(model, student.logits, labels)
    t_logits, _ = scored(model, teacher.logits, labels)
    if s_logits.shape[-1] == 1:  # regression: match the predicted values
        kl = F.mse_loss(s_logits, t_logits)
    else:
        kl = (
            F.kl_div(
                F.log_softmax(s_logits / temperature, -1),
                F.log_softmax(t_logits / temperature, -1),
                log_target=True,
                reduction="batchmean",
            )
            * temperature**2
        )
    prompt = model.config.prompt_length
    hidden = masked_mse(
        last_hidden(model, student)[:, prompt : prompt + attention_mask.shape[1]],
        last_hidden(model, teacher)[:, prompt : prompt + attention_mask.shape[1]],
        attention_mask,
    )
    if model.family == "seq2seq":
        hidden = hidden + masked_mse(
            student.decoder_hidden_states[-1], teacher.decoder_hidden_states[-1], labels != IGNORE_INDEX
        )
    return kl, hidden


def masked_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked-in positions and the hidden dimensions of (student - teacher)^2."""
    weight = mask.unsqueeze(-1).to(torch.float32)
    return ((student.float() - teacher.float()) ** 2 * weight).sum() / (weight.sum() * student.shape[-1]).clamp(min=1)


def mpt_source_loss(task_loss: Tensor, logits_loss: Tensor, hidden_loss: Tensor, weight: float) -> Tensor:
    """The MPT paper's source-stage objective: L_PLM + lambda * (L_logits + L_hidden)."""
    return task_loss + weight * (logits_loss + hidden_loss)


def last_hidden(model: PromptModel, out) -> Tensor:
    """The last layer's hidden states of the input side: the encoder's (seq2seq), else the model's."""
    return out.encoder_last_hidden_state if model.family == "seq2seq" else out.hidden_states[-1]
