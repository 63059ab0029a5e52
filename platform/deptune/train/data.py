"""Tokenised examples, family-specific batches, and a deterministic global-batch order.

The order of examples depends only on (seed, epoch), and each optimizer step consumes one global batch.
So N workers taking interleaved slices of the same global batch train on what 1 worker would, and a
resumed run continues from its step without replaying data. A training set smaller than the batch (a
32-example FewGLUE set, k=4 few-shot) trains with every example in each step, as the official runs do
(their data loader, with drop_last off, yields one batch holding the whole set).
`MixtureBatches` draws MPT's multitask batches: examples-proportional mixing with a size cap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from deptune.backbones import Backbone
from deptune.methods.config import CausalRule
from deptune.methods.model import IGNORE_INDEX
from deptune.tasks.base import Example, Task


@dataclass(frozen=True)
class Encoded:
    source_ids: list[int]
    target_ids: list[int]  # seq2seq/causal: label tokens
    label: float  # encoder: class id (regression: the value)
    target: str  # what predictions are scored against (`Example.reference`)


OFFICIAL_CAUSAL_CUE = " Label : "
"""What the official DePT code appends to a decoder-only input (train.py: `f"{x} Label : "`)."""


def encode(
    examples: Sequence[Example],
    backbone: Backbone,
    task: Task,
    max_length: int,
    max_target_length: int,
    causal_rule: CausalRule = "aligned",
) -> list[Encoded]:
    """Tokenise once; sources are truncated to the adapter's s (see `causal_official` for that rule)."""
    tok = backbone.tokenizer
    if backbone.family == "encoder" and not task.label_names and not task.is_regression:
        raise ValueError(
            f"task {task.name} is generative (extractive QA): it needs a seq2seq or causal backbone, "
            f"not the encoder {backbone.name}"
        )
    if backbone.family == "causal" and causal_rule == "official":
        return causal_official(examples, backbone, max_length, max_target_length)
    sources = tok([e.source for e in examples], truncation=True, max_length=max_length)["input_ids"]
    if backbone.family == "encoder":
        labels = [float(e.target) if task.is_regression else float(task.label_names.index(e.target)) for e in examples]
        return [Encoded(s, [], y, e.reference) for s, y, e in zip(sources, labels, examples)]
    if backbone.family == "seq2seq":
        targets = tok([e.target for e in examples], truncation=True, max_length=max_target_length)["input_ids"]
    else:  # causal: the answer follows the source after a space and ends with EOS
        targets = tok(
            [" " + e.target for e in examples],
            add_special_tokens=False,
            truncation=True,
            max_length=max_target_length - 1,
        )["input_ids"]
        targets = [t + [tok.eos_token_id] for t in targets]
    return [Encoded(s, t, 0.0, e.reference) for s, t, e in zip(sources, targets, examples)]


def causal_official(
    examples: Sequence[Example], backbone: Backbone, max_length: int, max_target_length: int
) -> list[Encoded]:
    """The official code's decoder-only example (train.py `decoder_preprocess_function`): source
    `tokenizer(f"{x} Label : ")`, answer `tokenizer(y)` (each with the tokenizer's own special tokens) + the pad
    id (EOS where the tokenizer has no pad); source + answer lie within s. The official code cuts a longer
    sequence at s, answer first; here the answer (at most max_target_length tokens) is kept and the source
    loses its tail."""
    tok = backbone.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    answers = [t[: max_target_length - 1] + [pad] for t in tok([e.target for e in examples])["input_ids"]]
    sources = tok([e.source + OFFICIAL_CAUSAL_CUE for e in examples], truncation=True, max_length=max_length)[
        "input_ids"
    ]
    return [Encoded(s[: max_length - len(a)], a, 0.0, e.reference) for s, a, e in zip(sources, answers, examples)]


def _pad(rows: list[list[int]], value: int, left: bool = False) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


def train_batch(items: Sequence[Encoded], backbone: Backbone, regression: bool = False) -> dict[str, Tensor]:
    """Right-padded inputs and labels for one step of the family's loss."""
    pad = backbone.tokenizer.pad_token_id
    if backbone.family == "causal":
        ids = [e.source_ids + e.target_ids for e in items]
        labels = [[IGNORE_INDEX] * len(e.source_ids) + e.target_ids for e in items]
        return {
            "input_ids": _pad(ids, pad),
            "attention_mask": _pad([[1] * len(r) for r in ids], 0),
            "labels": _pad(labels, IGNORE_INDEX),
        }
    batch = {
        "input_ids": _pad([e.source_ids for e in items], pad),
        "attention_mask": _pad([[1] * len(e.source_ids) for e in items], 0),
    }
    if backbone.family == "seq2seq":
        batch["labels"] = _pad([e.target_ids for e in items], IGNORE_INDEX)
    else:
        batch["labels"] = torch.tensor([e.label for e in items], dtype=torch.float32 if regression else torch.long)
    return batch


def eval_batch(items: Sequence[Encoded], backbone: Backbone) -> dict[str, Tensor]:
    """Sources only; left-padded for causal generation."""
    left = backbone.family == "causal"
    rows = [e.source_ids for e in items]
    return {
        "input_ids": _pad(rows, backbone.tokenizer.pad_token_id, left=left),
        "attention_mask": _pad([[1] * len(r) for r in rows], 0, left=left),
    }


class GlobalBatches:
    """Global batch k of the run = a fixed slice of the (seed, epoch) permutation; worker `rank` of
    `world_size` takes every world_size-th example of it. A set smaller than the batch is one batch (all
    of it, reshuffled every step), so the step's loss is the mean over the whole set."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("the train split is empty")
        batch_size = min(batch_size, size)
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_epoch = size // batch_size
        self._cached_epoch, self._cached = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> list[int]:
        if world_size > self.batch_size:
            raise ValueError(
                f"the train split has {self.size} examples, fewer than the {world_size} workers: "
                "every rank needs at least one"
            )
        epoch, position = divmod(step, self.per_epoch)
        batch = self._order(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
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


def mixing_rates(sizes: Sequence[int], size_cap: int | None) -> list[float]:
    """Examples-proportional mixing (T5, Raffel et al. 2020, section 3.5.2): task k's share is
    min(n_k, cap) / sum_j min(n_j, cap), so a huge task cannot swamp the others."""
    capped = [min(n, size_cap) if size_cap else n for n in sizes]
    total = sum(capped)
    if total <= 0:
        raise ValueError("the source tasks have no training examples")
    return [c / total for c in capped]


class MixtureBatches:
    """MPT's multitask batches. Each step draws the task of every one of `batch_size` slots from `rates`
    (seeded per step, so step t's draw never depends on earlier steps), then task k takes its next examples
    from its own epoch-permutation stream. `balanced` instead gives every task batch_size // K slots.
    Steps are meant to be asked in order; asking out of order replays the streams from step 0."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int, rates: Sequence[float] | None = None) -> None:
        if any(n < 1 for n in sizes):
            raise ValueError(f"every source task needs training examples; sizes {list(sizes)}")
        self.sizes, self.batch_size, self.seed = list(sizes), batch_size, seed
        self.rates = torch.tensor(list(rates), dtype=torch.float64) if rates is not None else None
        self._next_step, self._positions = 0, [0] * len(sizes)
        self._orders: dict[tuple[int, int], list[int]] = {}

    def counts(self, step: int) -> list[int]:
        """How many of the step's slots each task gets."""
        if self.rates is None:
            return [self.batch_size // len(self.sizes)] * len(self.sizes)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        slots = torch.multinomial(self.rates, self.batch_size, replacement=True, generator=generator)
        return torch.bincount(slots, minlength=len(self.sizes)).tolist()

    def indices(self, step: int) -> list[list[int]]:
        """Per task, the example indices of its part of step `step`'s batch (possibly empty)."""
        if step < self._next_step:
            self._next_step, self._positions = 0, [0] * len(self.sizes)
        while self._next_step < step:
            self._take(self.counts(self._next_step))
        return self._take(self.counts(step))

    def _take(self, counts: list[int]) -> list[list[int]]:
        out = []
        for k, count in enumerate(counts):
            out.append([self._stream(k, self._positions[k] + j) for j in range(count)])
            self._positions[k] += count
        self._next_step += 1
        return out

    def _stream(self, task: int, position: int) -> int:
        """Example `position` of task `task`'s endless stream of seeded epoch permutations."""
        epoch, offset = divmod(position, self.sizes[task])
        key = (task, epoch)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != task}  # keep one epoch per task
            generator = torch.Generator().manual_seed(self.seed + 7919 * task + epoch)
            self._orders[key] = torch.randperm(self.sizes[task], generator=generator).tolist()
        return self._orders[key][offset]
