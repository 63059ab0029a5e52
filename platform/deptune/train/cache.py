"""What every trial of a sweep shares, kept by the process that runs them: the frozen backbone (on its
device) and the task's splits with their tokenisations.

A Ray Tune trial actor is reused from trial to trial (`resources.runner: tune`), so the second trial of
a sweep pays neither imports nor a backbone load nor tokenisation. Each checkout hands the backbone back
exactly as a fresh process would have it: every weight frozen, an encoder's classification head (the one
part of the backbone a trial trains) at its initial values, no gradients, and the random-number state
that loading left behind (so a cached trial draws the same prompt init and dropout as a fresh one).
The frozen weights themselves are never written (a test hashes them before and after).

What a load leaves alive (modules, the backbone, the data) lives as long as the cache: it is collected once
and then frozen out of the cyclic collector's sight (`gc.freeze`), so the collection after each trial
(`release_trial_memory`) scans only what was made since, the trial's own garbage, not the whole heap of
torch, transformers and Ray (a full collection costs a reused actor ~0.3 s a trial on a 2-core box).
`release` unfreezes before it collects, so a backbone the cache drops is freed as before.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deptune.backbones import Backbone, BackboneConfig, head_names, load_backbone
from deptune.methods.config import CausalRule
from deptune.tasks.base import Example, Task, TaskSplits
from deptune.tasks.config import TaskConfig
from deptune.tasks.loading import dataset_fingerprint, load_splits
from deptune.train.data import Encoded, encode


class EncodedSplit:
    """A split's examples, each tokenised once, on first use (a step's batch, the validation split)."""

    def __init__(
        self,
        examples: Sequence[Example],
        backbone: Backbone,
        task: Task,
        max_length: int,
        max_target_length: int,
        causal_rule: CausalRule = "aligned",
    ) -> None:
        self.examples = examples
        self._encode = lambda rows: encode(rows, backbone, task, max_length, max_target_length, causal_rule)
        self._done: dict[int, Encoded] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def take(self, indices: Sequence[int]) -> list[Encoded]:
        missing = [i for i in dict.fromkeys(indices) if i not in self._done]
        if missing:
            self._done.update(zip(missing, self._encode([self.examples[i] for i in missing])))
        return [self._done[i] for i in indices]

    def all(self) -> list[Encoded]:
        return self.take(range(len(self.examples)))


def rng_states() -> tuple[Any, ...]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def set_rng_states(states: tuple[Any, ...]) -> None:
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])


@dataclass
class Shared:
    """One backbone + one task's data, as the first trial loaded them."""

    splits: TaskSplits
    backbone: Backbone
    rng_after_load: tuple[Any, ...]
    head: dict[str, torch.Tensor]  # an encoder's head at its initial values (empty for other families)
    encoded: dict[tuple[str, int, int, CausalRule], EncodedSplit] = field(default_factory=dict)

    def split(
        self, name: str, task: Task, max_length: int, max_target_length: int, causal_rule: CausalRule = "aligned"
    ) -> EncodedSplit:
        key = (name, max_length, max_target_length, causal_rule)
        if key not in self.encoded:
            self.encoded[key] = EncodedSplit(
                getattr(self.splits, name), self.backbone, task, max_length, max_target_length, causal_rule
            )
        return self.encoded[key]


class ProcessCache:
    """The last backbone and data this process loaded (a sweep uses one), keyed by everything they depend on."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._shared: Shared | None = None

    def checkout(
        self,
        backbone: BackboneConfig,
        task: TaskConfig,
        num_labels: int,
        seed: int,
        device: torch.device,
    ) -> Shared:
        """The shared state for this run, loaded on a miss (the caller has seeded the process)."""
        key = (
            backbone.model_dump_json(),
            task.model_dump_json(),
            dataset_fingerprint(task),
            num_labels,
            seed,
            str(device),
        )
        if key != self._key or self._shared is None:
            self.release()
            splits, loaded = _load(backbone, task, num_labels)
            loaded.model.to(device)
            self._shared = Shared(
                splits,
                loaded,
                rng_states(),
                {name: p.detach().clone() for name, p in loaded.model.named_parameters() if name in head_names(loaded)},
            )
            self._key = key
            _freeze_long_lived()
        else:
            self._reset(self._shared)
        return self._shared

    @staticmethod
    def _reset(shared: Shared) -> None:
        model = shared.backbone.model
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.requires_grad_(False)
                param.grad = None
                if name in shared.head:
                    param.copy_(shared.head[name])
        model.train()
        set_rng_states(shared.rng_after_load)

    def release(self) -> None:
        """Drop what is cached and give its accelerator memory back."""
        cached = self._shared is not None
        self._key, self._shared = None, None
        if not cached:  # nothing to give back (a first load): no collection of the whole heap
            return
        gc.unfreeze()  # what the load froze is collectable again
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _freeze_long_lived() -> None:
    """Collect once, then move every object alive now out of the collector's generations (see the module)."""
    gc.collect()
    gc.freeze()


def _load(backbone: BackboneConfig, task: TaskConfig, num_labels: int) -> tuple[TaskSplits, Backbone]:
    splits = load_splits(task)  # bad data fails here, before the backbone is loaded
    return splits, load_backbone(backbone, num_labels=num_labels)


PROCESS_CACHE = ProcessCache()
"""The cache of this process: a reused Tune trial actor's trials all see it."""


def release_trial_memory(device: torch.device) -> None:
    """After a trial: its adapter, optimizer state and activations are garbage; collect them now."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
