"""Tokenised examples, family-specific batches, and a deterministic global-batch order.

The order of examples depends only on (seed, epoch), and each optimizer step consumes one global batch.
So N workers taking interleaved slices of the same global batch train on what 1 worker would, and a
resumed run continues from its step without replaying data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from deptune.methods.model import IGNORE_INDEX
from deptune.backbones import Backbone
from deptune.tasks.base import Example, Task


@dataclass(frozen=True)
class Encoded:
    source_ids: list[int]
    target_ids: list[int]  # seq2seq/causal: label tokens
    label: float  # encoder: class id (regression: the value)
    target: str


def encode(examples: Sequence[Example], backbone: Backbone, task: Task, max_length: int,
           max_target_length: int) -> list[Encoded]:
    """Tokenise once; sources are truncated to the adapter's s."""
    tok = backbone.tokenizer
    sources = tok([e.source for e in examples], truncation=True, max_length=max_length)["input_ids"]
    if backbone.family == "encoder":
        labels = [float(e.target) if task.is_regression else float(task.label_names.index(e.target))
                  for e in examples]
        return [Encoded(s, [], y, e.target) for s, y, e in zip(sources, labels, examples)]
    if backbone.family == "seq2seq":
        targets = tok([e.target for e in examples], truncation=True, max_length=max_target_length)["input_ids"]
    else:  # causal: the answer follows the source after a space and ends with EOS
        targets = tok([" " + e.target for e in examples], add_special_tokens=False, truncation=True,
                      max_length=max_target_length - 1)["input_ids"]
        targets = [t + [tok.eos_token_id] for t in targets]
    return [Encoded(s, t, 0.0, e.target) for s, t, e in zip(sources, targets, examples)]


def _pad(rows: list[list[int]], value: int, left: bool = False) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


def train_batch(items: Sequence[Encoded], backbone: Backbone, regression: bool = False) -> dict[str, Tensor]:
    """Right-padded inputs and labels for one step of the family's loss."""
    pad = backbone.tokenizer.pad_token_id
    if backbone.family == "causal":
        ids = [e.source_ids + e.target_ids for e in items]
        labels = [[IGNORE_INDEX] * len(e.source_ids) + e.target_ids for e in items]
        return {"input_ids": _pad(ids, pad), "attention_mask": _pad([[1] * len(r) for r in ids], 0),
                "labels": _pad(labels, IGNORE_INDEX)}
    batch = {"input_ids": _pad([e.source_ids for e in items], pad),
             "attention_mask": _pad([[1] * len(e.source_ids) for e in items], 0)}
    if backbone.family == "seq2seq":
        batch["labels"] = _pad([e.target_ids for e in items], IGNORE_INDEX)
    else:
        batch["labels"] = torch.tensor([e.label for e in items],
                                       dtype=torch.float32 if regression else torch.long)
    return batch


def eval_batch(items: Sequence[Encoded], backbone: Backbone) -> dict[str, Tensor]:
    """Sources only; left-padded for causal generation."""
    left = backbone.family == "causal"
    rows = [e.source_ids for e in items]
    return {"input_ids": _pad(rows, backbone.tokenizer.pad_token_id, left=left),
            "attention_mask": _pad([[1] * len(r) for r in rows], 0, left=left)}


class GlobalBatches:
    """Global batch k of the run = a fixed slice of the (seed, epoch) permutation; worker `rank` of
    `world_size` takes every world_size-th example of it."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if size < batch_size:
            raise ValueError(f"the train split has {size} examples, fewer than train.batch_size={batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_epoch = size // batch_size
        self._cached_epoch, self._cached = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> list[int]:
        epoch, position = divmod(step, self.per_epoch)
        batch = self._order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        return batch[rank::world_size].tolist()

    def _order(self, epoch: int) -> Tensor:
        """The epoch's permutation, kept while the epoch lasts (steps ask for it in order)."""
        if self._cached_epoch != epoch:
            self._cached = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            self._cached_epoch = epoch
        return self._cached

    def iterate(self, start_step: int, rank: int = 0, world_size: int = 1) -> Iterator[list[int]]:
        step = start_step
        while True:
            yield self.indices(step, rank, world_size)
            step += 1
