from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from deptune.backbones import Backbone
from deptune.methods.dept.config import DePTConfig
from deptune.methods.model import PromptModel, positions


class DePTModel(PromptModel):
    """E = W_emb[ids] + (alpha / sqrt(r)) * (A @ B)[row], before the prompt is prepended.

    Seq2seq and encoder inputs, and causal ones under the aligned rule, take row i for their i-th real token:
    the official code's row for T5, whose inputs it right-pads to s (its `(A @ B)` over all s positions), for
    any padding side. Causal inputs under `causal_rule: official` take row s - n + i, the official code's for
    a sequence of n tokens left-padded to s, answer tokens included (see `deptune.methods.model`). Padding
    gets no update (the official code updates it, but it is masked out); inputs longer than s are rejected.
    """

    config: DePTConfig

    def __init__(self, backbone: Backbone, config: DePTConfig) -> None:
        config = config.resolve(backbone.hidden_size)
        super().__init__(backbone, config)
        self.lora_embedding_A = nn.Parameter(torch.empty(config.max_length, config.rank))
        nn.init.kaiming_uniform_(self.lora_embedding_A, a=math.sqrt(5))  # U(-1/sqrt(r), 1/sqrt(r))
        self.lora_embedding_B = nn.Parameter(torch.zeros(config.rank, self.hidden_size))  # step 0 == PT
        self.scaling = config.alpha / math.sqrt(config.rank)

    def update_embeddings(
        self, input_ids: Tensor, embeds: Tensor, attention_mask: Tensor, update_mask: Tensor
    ) -> Tensor:
        self.check_input_length(update_mask)
        update = (self.lora_embedding_A @ self.lora_embedding_B) * self.scaling
        rows = (positions(update_mask) + self.window_shift(update_mask)).clamp(max=self.config.max_length - 1)
        return embeds + update.to(embeds.dtype)[rows] * update_mask.unsqueeze(-1).to(embeds.dtype)

    def method_tensors(self) -> dict[str, Tensor]:
        return {
            **super().method_tensors(),
            "lora_embedding_A": self.lora_embedding_A,
            "lora_embedding_B": self.lora_embedding_B,
        }

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {**super().parameter_groups(), "lowrank": [self.lora_embedding_A, self.lora_embedding_B]}
