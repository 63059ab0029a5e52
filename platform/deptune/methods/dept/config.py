from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from deptune.methods.budget import dept_count, largest_prompt_length, rank_for_budget
from deptune.methods.config import Dimension, PromptConfig
from deptune.spec_base import FloatRange, IntRange, Range

DEFAULT_UNBUDGETED_M = IntRange(low=20, high=100)
DEFAULT_RANK = IntRange(low=4, high=64, log=True)


class DePTConfig(PromptConfig):
    """m prompt tokens plus A (s x r) @ B (r x d) added to the first s token embeddings.

    Give `rank` directly, or `budget` (l, the PT-equivalent prompt length) and the rank is derived from
    the backbone's hidden size so the trainable count stays l*d (see `resolve`). A search with a budget
    samples m and derives r; without one it searches m and r independently.
    """

    name: Literal["dept"] = "dept"
    prompt_length: PositiveInt = Field(60, description="m: soft-prompt tokens")
    rank: PositiveInt | None = Field(None, description="r: rank of A @ B")
    budget: PositiveInt | None = Field(None, description="l: PT-equivalent tokens; derives r")
    alpha: PositiveFloat = Field(8.0, description="the update is scaled by alpha / sqrt(r)")

    lr_groups: ClassVar[Mapping[str, float]] = {"prompt": 0.3, "lowrank": 1e-4}  # the prompt; A and B
    search_dimensions: ClassVar[Mapping[str, type[IntRange] | type[FloatRange]]] = {
        "prompt_length": IntRange,
        "rank": IntRange,
    }
    default_ranges: ClassVar[Mapping[str, Range]] = {
        "lr_prompt": FloatRange(low=0.3, high=0.4),
        "lr_lowrank": FloatRange(low=1e-4, high=5e-3),
    }

    @model_validator(mode="after")
    def _rank_or_budget(self) -> DePTConfig:
        if self.rank is None and self.budget is None:
            raise ValueError("method.rank: give rank (r) or budget (l, PT-equivalent tokens)")
        return self

    def resolve(self, hidden_size: int) -> DePTConfig:
        """Fix the rank for a backbone of this hidden size; a rank that breaks the budget is an error."""
        if self.budget is None:
            return self
        plan = rank_for_budget(self.budget, hidden_size, self.max_length, self.prompt_length)
        if self.rank is not None and self.rank != plan.rank:
            raise ValueError(
                f"rank={self.rank} does not match budget l={self.budget} (m={self.prompt_length}, "
                f"d={hidden_size}, s={self.max_length} gives r={plan.rank}); give one of the two"
            )
        return self.model_copy(update={"rank": plan.rank})

    def refused_search_keys(self) -> dict[str, str]:
        if self.budget is not None:
            return {"rank": "the rank is derived from method.budget; remove search.rank or the budget"}
        return {}

    def search_errors(self, ranges: Mapping[str, Range]) -> list[str]:
        m = ranges.get("prompt_length")
        if self.budget is None or not isinstance(m, IntRange):
            return []
        if self.budget < 3:  # m >= 1 and rank 1 need (l - m) d >= s + d > d, so l - m >= 2
            return [
                f"method.budget: l={self.budget} cannot hold a prompt and a rank-1 pair at any hidden size "
                f"(needs l >= 3)"
            ]
        if m.low >= self.budget:
            return [
                f"method.budget: l={self.budget} is below every searched m ({m.low}-{m.high}); DePT needs "
                f"m < l to leave room for the low-rank pair"
            ]
        if m.high >= self.budget:
            return [
                f"search.prompt_length.high: m={m.high} must be < method.budget (l={self.budget}): m = l "
                f"leaves nothing for the low-rank pair"
            ]
        return []

    def dimensions(self, ranges: Mapping[str, Range], hidden_size: int) -> tuple[dict[str, Dimension], list[str]]:
        dims, _ = super().dimensions(ranges, hidden_size)
        dims.pop("rank")  # searched without a budget (below), derived from m with one
        s, given_m = self.max_length, ranges.get("prompt_length")
        if self.budget is None:
            dims["prompt_length"] = given_m or DEFAULT_UNBUDGETED_M
            dims["rank"] = ranges.get("rank") or DEFAULT_RANK
            return dims, []
        m_max = largest_prompt_length(self.budget, hidden_size, s)
        if m_max < 1:
            return {}, [
                f"method.budget: l={self.budget} cannot hold a prompt and a rank-1 pair at d={hidden_size}, "
                f"s={s} (needs l >= {1 + -(-(s + hidden_size) // hidden_size)})"
            ]
        if given_m is None:
            dims["prompt_length"] = IntRange(low=min(20, m_max), high=m_max)
        elif isinstance(given_m, IntRange) and given_m.high > m_max:
            key = "method.budget" if given_m.low > m_max else "search.prompt_length.high"
            return {}, [
                f"{key}: m={given_m.high} leaves rank 0 for budget l={self.budget} at d={hidden_size}, "
                f"s={s}; the largest feasible m is {m_max}"
            ]
        return dims, []

    def derived(self, values: Mapping[str, Any], hidden_size: int) -> dict[str, Any]:
        if self.budget is None:
            return {}
        return {"rank": rank_for_budget(self.budget, hidden_size, self.max_length, int(values["prompt_length"])).rank}

    def adapter_params(self, values: Mapping[str, Any], hidden_size: int) -> int:
        rank = values.get("rank") or self.resolve(hidden_size).rank
        return dept_count(int(values.get("prompt_length", self.prompt_length)), int(rank), hidden_size, self.max_length)

    def budget_params(self, hidden_size: int) -> int | None:
        return None if self.budget is None else self.budget * hidden_size

    def logged_params(self) -> dict[str, Any]:
        return {**super().logged_params(), "rank": self.rank, "budget": self.budget, "alpha": self.alpha}
