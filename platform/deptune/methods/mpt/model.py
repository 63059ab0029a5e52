from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from deptune.backbones import Backbone
from deptune.methods.io import read_tensors
from deptune.methods.model import PromptModel
from deptune.methods.mpt.config import AVERAGE, NO_VECTORS, MPTConfig
from deptune.methods.record import read_record


def initial_vectors(n_tasks: int, length: int, rank: int, hidden_size: int) -> tuple[Tensor, Tensor]:
    """u (n, l, r), v (n, r, d) with u v^T = 1 exactly, so step 0 is vanilla PT with P*.

    PEFT draws both from N(0, 0.02^2), which makes a fresh prompt ~1e-4 * P*, nearly nothing. Here rank
    component 0 is all ones and the others start as (small noise, zero), as LoRA does, so they can grow.
    """
    cols = torch.cat([torch.ones(n_tasks, length, 1), 0.02 * torch.randn(n_tasks, length, rank - 1)], dim=-1)
    rows = torch.cat([torch.ones(n_tasks, 1, hidden_size), torch.zeros(n_tasks, rank - 1, hidden_size)], dim=1)
    return cols, rows


class MPTModel(PromptModel):
    """P* (`prompt_embeddings`) and per-task `prefix_task_cols` u (n, l, r), `prefix_task_rows` v (n, r, d).

    The prompt of task k (`task_index`, set with `for_task` by the multitask source stage) is
    P* ⊙ (u_k @ v_k); a target run has one task.
    """

    config: MPTConfig

    def __init__(self, backbone: Backbone, config: MPTConfig) -> None:
        super().__init__(backbone, config)
        cols, rows = initial_vectors(config.n_tasks, config.prompt_length, config.rank, self.hidden_size)
        self.prefix_task_cols = nn.Parameter(cols)
        self.prefix_task_rows = nn.Parameter(rows)
        self.task_index = 0
        if config.n_tasks > 1:  # a source adapter has no head: each source task's stays with its teacher
            for param in self.parameter_groups()["head"]:
                param.requires_grad_(False)
            self.head_names = []

    def prompt(self) -> Tensor:
        k = self.task_index
        return self.prompt_embeddings * (self.prefix_task_cols[k] @ self.prefix_task_rows[k])

    @contextmanager
    def for_task(self, index: int) -> Iterator[None]:
        """Forward passes inside use task `index`'s prompt."""
        previous, self.task_index = self.task_index, index
        try:
            yield
        finally:
            self.task_index = previous

    def method_tensors(self) -> dict[str, Tensor]:
        return {
            **super().method_tensors(),
            "prefix_task_cols": self.prefix_task_cols,
            "prefix_task_rows": self.prefix_task_rows,
        }

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """u and v train at lr_lowrank: they are the rank-r factors, near 1, unlike P* at embedding scale."""
        return {**super().parameter_groups(), "lowrank": [self.prefix_task_cols, self.prefix_task_rows]}

    def transfer_from(self, directory: Path) -> None:
        """P* from a source adapter, and (u, v) as `init_vectors` says; its tasks' heads are left behind."""
        record, saved = read_record(directory), read_tensors(directory)
        if record.method != "mpt":
            raise ValueError(
                f"method.init_from: {directory} holds a {record.method} adapter; an mpt run starts "
                f"from an mpt source adapter (deptune mpt-source)"
            )
        if self.config.n_tasks != 1:
            raise ValueError("an mpt run with several source_tasks cannot start from an adapter")
        cols, rows = saved["prefix_task_cols"], saved["prefix_task_rows"]
        expected = {
            "prompt_embeddings": tuple(self.prompt_embeddings.shape),
            "prefix_task_cols": (cols.shape[0], *self.prefix_task_cols.shape[1:]),
            "prefix_task_rows": (rows.shape[0], *self.prefix_task_rows.shape[1:]),
        }
        wrong = [
            f"{k}: file {tuple(saved[k].shape)} vs model {v}" for k, v in expected.items() if tuple(saved[k].shape) != v
        ]
        if wrong:
            raise ValueError(f"source adapter {directory} does not fit this model (l, r and d must match): {wrong}")
        index = self._vector_index(record.method_config.get("source_tasks") or [record.task or "?"], directory)
        with torch.no_grad():
            self.prompt_embeddings.copy_(saved["prompt_embeddings"])
            if index == AVERAGE:
                self.prefix_task_cols.copy_(cols.mean(0, keepdim=True))
                self.prefix_task_rows.copy_(rows.mean(0, keepdim=True))
            elif index != NO_VECTORS:
                self.prefix_task_cols.copy_(cols[index : index + 1])
                self.prefix_task_rows.copy_(rows[index : index + 1])

    def _vector_index(self, tasks: list[str], directory: Path) -> int | str:
        choice = self.config.init_vectors
        if choice in (AVERAGE, NO_VECTORS):
            return choice
        if choice not in tasks:
            raise ValueError(
                f"method.init_vectors: {choice!r} is not a source task of {directory} "
                f"({', '.join(tasks)}); or use 'average' or 'none'"
            )
        return tasks.index(choice)
