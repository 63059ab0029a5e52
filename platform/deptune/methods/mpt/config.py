from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from deptune.methods.base import PromptConfig

AVERAGE, NO_VECTORS = "average", "none"


class MPTConfig(PromptConfig):
    """Task prompt = P* (l x d) ⊙ (u_k v_k^T), u_k (l x r), v_k (r x d); one (u, v) per task.

    A target run has one task; `init_from` names an MPT source adapter (from `deptune mpt-source`) whose
    P* it starts from, with `init_vectors` choosing (u, v): the average over the source tasks (the paper's
    setting), one named source task's, or `none` (u v^T = 1: P* alone).
    """

    name: Literal["mpt"] = "mpt"
    prompt_length: PositiveInt = Field(100, description="l: soft-prompt tokens (fixed by a source adapter's P*)")
    rank: PositiveInt = Field(1, description="r: rank of each task's u v^T (1 in the paper)")
    init_vectors: str = Field(AVERAGE, description="with init_from (ignored without): 'average' of the source "
                                                   "tasks' (u, v), a source task's name, or 'none' (P* alone)")
    source_tasks: list[str] = Field(default_factory=list, description="set by `deptune mpt-source`: the tasks "
                                                                      "of a source adapter, one (u, v) each")

    @model_validator(mode="after")
    def _unique_tasks(self) -> "MPTConfig":
        if len(set(self.source_tasks)) != len(self.source_tasks):
            raise ValueError(f"method.source_tasks: each task once, got {self.source_tasks}")
        return self

    @property
    def n_tasks(self) -> int:
        return max(1, len(self.source_tasks))
