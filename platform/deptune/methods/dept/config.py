from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from deptune.methods.base import PromptConfig
from deptune.methods.budget import rank_for_budget


class DePTConfig(PromptConfig):
    """m prompt tokens plus A (s x r) @ B (r x d) added to the first s token embeddings.

    Give `rank` directly, or `budget` (l, the PT-equivalent prompt length) and the rank is derived from
    the backbone's hidden size so the trainable count stays l*d (see `resolve`).
    """

    name: Literal["dept"] = "dept"
    prompt_length: PositiveInt = Field(60, description="m: soft-prompt tokens")
    rank: PositiveInt | None = Field(None, description="r: rank of A @ B")
    budget: PositiveInt | None = Field(None, description="l: PT-equivalent tokens; derives r")
    alpha: PositiveFloat = Field(8.0, description="the update is scaled by alpha / sqrt(r)")

    @model_validator(mode="after")
    def _rank_or_budget(self) -> "DePTConfig":
        if self.rank is None and self.budget is None:
            raise ValueError("give rank (r) or budget (l, PT-equivalent tokens)")
        return self

    def resolve(self, hidden_size: int) -> "DePTConfig":
        """Fix the rank for a backbone of this hidden size; a rank that breaks the budget is an error."""
        if self.budget is None:
            return self
        plan = rank_for_budget(self.budget, hidden_size, self.max_length, self.prompt_length)
        if self.rank is not None and self.rank != plan.rank:
            raise ValueError(f"rank={self.rank} does not match budget l={self.budget} (m={self.prompt_length}, "
                             f"d={hidden_size}, s={self.max_length} gives r={plan.rank}); give one of the two")
        return self.model_copy(update={"rank": plan.rank})
