from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from deptune.methods.budget import mpt_count
from deptune.methods.config import PromptConfig
from deptune.spec_base import FloatRange, IntRange, Range

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
    init_vectors: str = Field(
        AVERAGE,
        description="with init_from (ignored without): 'average' of the source "
        "tasks' (u, v), a source task's name, or 'none' (P* alone)",
    )
    source_tasks: list[str] = Field(
        default_factory=list, description="set by `deptune mpt-source`: the tasks of a source adapter, one (u, v) each"
    )

    @model_validator(mode="after")
    def _unique_tasks(self) -> MPTConfig:
        if len(set(self.source_tasks)) != len(self.source_tasks):
            raise ValueError(f"method.source_tasks: each task once, got {self.source_tasks}")
        return self

    @property
    def n_tasks(self) -> int:
        return max(1, len(self.source_tasks))

    lr_groups: ClassVar[Mapping[str, float]] = {"prompt": 0.3, "lowrank": 1e-4}  # P*; the task vectors u, v
    default_ranges: ClassVar[Mapping[str, Range]] = {
        "lr_prompt": FloatRange(low=0.3, high=0.4),
        "lr_lowrank": FloatRange(low=1e-4, high=5e-3),
    }

    def refused_search_keys(self) -> dict[str, str]:
        return {"rank": "mpt's rank is method.rank (a source adapter fixes it); remove it"}

    def search_errors(self, ranges: Mapping[str, Range]) -> list[str]:
        m = ranges.get("prompt_length")
        if self.init_from is not None and isinstance(m, IntRange) and m.low != m.high:
            return ["search.prompt_length: the source adapter's P* (method.init_from) fixes l; remove it"]
        return []

    def adapter_params(self, values: Mapping[str, Any], hidden_size: int) -> int:
        return mpt_count(int(values.get("prompt_length", self.prompt_length)), self.rank, hidden_size)

    def logged_params(self) -> dict[str, Any]:
        return {**super().logged_params(), "rank": self.rank, "init_vectors": self.init_vectors}

    def source_errors(self, record: Any) -> list[str]:
        errors = super().source_errors(record)
        sources = record.method_config.get("source_tasks") or [record.task]
        if not errors and self.init_vectors not in (AVERAGE, NO_VECTORS, *sources):
            errors.append(
                f"method.init_vectors: {self.init_vectors!r} is not a source task of {self.init_from} "
                f"({', '.join(map(str, sources))}); or use 'average' or 'none'"
            )
        return errors
