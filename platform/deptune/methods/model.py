"""What every prompt method's model shares: a frozen backbone, a soft prompt prepended to the input, the
family-specific forward and generation, and the adapter tensors that are saved.

A method subclasses `PromptModel` and overrides `update_embeddings` (DePT adds its low-rank update
there) and, when it has more tensors, `adapter_tensors` and `parameter_groups`.

Decoder-only backbones follow `config.causal_rule`. `aligned`: a token's position (and DePT's low-rank row)
counts from the first real token, and the answer is not updated, so training and generation see the same
layout. `official`, the official DePT code's (train.py `decoder_preprocess_function`, peft_model.py
`PeftModelForCausalLM`): every sequence is left-padded to s, so a token's row counts back from s (row
s - n + i for token i of n), the answer tokens are updated too, and the training forward's positions are the
backbone's defaults over prompt + s (m + s - n + i); generation's come from the attention mask (m + i), as
Hugging Face's generate makes them there. Both are computed without padding to s.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from deptune.backbones import Backbone, head_names
from deptune.methods.config import PromptConfig
from deptune.methods.io import load_adapter_tensors
from deptune.methods.record import read_record

IGNORE_INDEX = -100


class PromptModel(nn.Module):
    """Frozen backbone + trainable prompt (+ an encoder's classification head)."""

    def __init__(self, backbone: Backbone, config: PromptConfig) -> None:
        super().__init__()
        self.backbone = backbone.model
        self.family = backbone.family
        self.config = config
        self.hidden_size = backbone.hidden_size
        self.prompt_embeddings = nn.Parameter(self._initial_prompt(backbone, config))
        self.head_names = self._unfreeze_head(backbone)
        self._check_position_limit()

    # ----- construction -------------------------------------------------------------------------------
    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def _initial_prompt(self, backbone: Backbone, config: PromptConfig) -> Tensor:
        emb = self.word_embeddings.weight.detach().float()
        n = config.prompt_length
        if config.init == "random":
            return torch.randn(n, emb.shape[1])
        if config.init == "sample_vocab":
            return emb[torch.randint(0, emb.shape[0], (n,))].clone()
        # As the official DePT code (and PEFT's prompt tuning): `tokenizer(text)`, special tokens kept (T5's </s>,
        # BERT's [CLS] ... [SEP]), tiled or cut to n rows.
        ids = backbone.tokenizer(config.init_text)["input_ids"]
        if not ids:
            raise ValueError("init_text tokenises to nothing")
        return emb[torch.tensor(ids).repeat(n // len(ids) + 1)[:n]].clone()

    def _unfreeze_head(self, backbone: Backbone) -> list[str]:
        """An encoder's classification head trains with the prompt (at lr_head)."""
        names = head_names(backbone)
        for name, param in self.backbone.named_parameters():
            if name in names:
                param.requires_grad_(True)
        return names

    def _check_position_limit(self) -> None:
        limit = getattr(self.backbone.config, "max_position_embeddings", None)
        if (
            self.family != "seq2seq"
            and limit is not None
            and self.config.prompt_length + self.config.max_length > limit
        ):
            raise ValueError(
                f"prompt_length + max_length = {self.config.prompt_length + self.config.max_length} "
                f"exceeds the backbone's {limit} positions"
            )

    def transfer_from(self, directory: Path) -> None:
        """Start from a source-task adapter: its method tensors, never its head (another task's labels)."""
        method = read_record(directory).method
        if method != self.config.name:
            raise ValueError(
                f"method.init_from: {directory} holds a {method} adapter; a {self.config.name} run "
                f"starts from a {self.config.name} adapter"
            )
        load_adapter_tensors(self, directory, skip_head=True)

    # ----- what is trained and saved --------------------------------------------------------------------
    def method_tensors(self) -> dict[str, Tensor]:
        """The method's own tensors by file key: what transfer carries to another task."""
        return {"prompt_embeddings": self.prompt_embeddings}

    def adapter_tensors(self) -> dict[str, Tensor]:
        """Everything in `adapter_model.safetensors`: the method's tensors plus an encoder's head."""
        params = dict(self.backbone.named_parameters())
        return {**self.method_tensors(), **{name: params[name] for name in self.head_names}}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per learning-rate group: `prompt`, `lowrank` (DePT), `head` (encoders)."""
        params = dict(self.backbone.named_parameters())
        return {"prompt": [self.prompt_embeddings], "lowrank": [], "head": [params[name] for name in self.head_names]}

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ----- forward ------------------------------------------------------------------------------------
    def prompt(self) -> Tensor:
        """The (l x d) soft prompt prepended to every input (MPT composes it from its factors)."""
        return self.prompt_embeddings

    def update_embeddings(
        self, input_ids: Tensor, embeds: Tensor, attention_mask: Tensor, update_mask: Tensor
    ) -> Tensor:
        """Hook for methods that change the input token embeddings (PT: none): `embeds` are the frozen
        table's rows for `input_ids` (a method may look the ids up itself, e.g. a LoRA on the table), and
        `update_mask` marks the tokens a method may update."""
        self.check_input_length(update_mask)
        return embeds

    def check_input_length(self, update_mask: Tensor) -> None:
        longest = int(update_mask.sum(-1).max()) if update_mask.numel() else 0
        if longest > self.config.max_length:
            raise ValueError(f"input of {longest} tokens exceeds the adapter's max_length s={self.config.max_length}")

    def _prompted_inputs(
        self, input_ids: Tensor, attention_mask: Tensor, update_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        embeds = self.word_embeddings(input_ids)
        embeds = self.update_embeddings(
            input_ids, embeds, attention_mask, attention_mask if update_mask is None else update_mask
        )
        batch = input_ids.shape[0]
        prompt = self.prompt().to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        prompt_mask = attention_mask.new_ones(batch, self.config.prompt_length)
        return torch.cat([prompt, embeds], dim=1), torch.cat([prompt_mask, attention_mask], dim=1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None, **backbone_kwargs):
        """Seq2seq: labels are target ids; causal: labels align with input_ids (-100 on the source);
        encoder: labels are class ids (floats for regression). `backbone_kwargs` go to the backbone
        (e.g. output_hidden_states for distillation)."""
        update_mask = attention_mask
        if self.family == "causal" and labels is not None and self.config.causal_rule == "aligned":
            update_mask = attention_mask * (labels == IGNORE_INDEX)  # generation never feeds an answer token
        embeds, mask = self._prompted_inputs(input_ids, attention_mask, update_mask)
        if self.family == "causal":
            if labels is not None:
                labels = torch.cat(
                    [labels.new_full((labels.shape[0], self.config.prompt_length), IGNORE_INDEX), labels], dim=1
                )
            position_ids = positions(mask)
            position_ids[:, self.config.prompt_length :] += self.window_shift(attention_mask)
            return self.backbone(
                inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels, **backbone_kwargs
            )
        return self.backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels, **backbone_kwargs)

    def window_shift(self, mask: Tensor) -> Tensor:
        """(batch, 1): how far the official causal layout moves each row's tokens, s - n for n real tokens
        (left-padded to s, they start at s - n); 0 under the aligned rule and for other families."""
        if self.family == "causal" and self.config.causal_rule == "official":
            return self.config.max_length - mask.long().sum(-1, keepdim=True)
        return mask.new_zeros(mask.shape[0], 1, dtype=torch.long)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int = 20, **kwargs) -> Tensor:
        """Greedy decoding of new tokens only (causal inputs must be left-padded)."""
        embeds, mask = self._prompted_inputs(input_ids, attention_mask)
        return self.backbone.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            **kwargs,
        )


def positions(attention_mask: Tensor) -> Tensor:
    """Position of each token among the real ones: left padding does not shift the text."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
