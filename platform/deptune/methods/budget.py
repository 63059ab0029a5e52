"""DePT's parameter budget: l*d = m*d + r*(s+d), so DePT costs what an l-token prompt costs; and the
trainable counts of each method."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetPlan:
    prompt_length: int  # m
    rank: int  # r
    trainable: int  # m*d + r*(s+d), never above the budget
    budget: int  # l*d


def dept_count(prompt_length: int, rank: int, hidden_size: int, max_length: int) -> int:
    return prompt_length * hidden_size + rank * (max_length + hidden_size)


def mpt_count(prompt_length: int, rank: int, hidden_size: int, tasks: int = 1) -> int:
    """P* (l x d) plus one u (l x r), v (r x d) per task: l*d + l + d per target task at rank 1
    (77,668 for T5-Base, l=100)."""
    return prompt_length * hidden_size + tasks * rank * (prompt_length + hidden_size)


def rank_for_budget(budget_tokens: int, hidden_size: int, max_length: int, prompt_length: int) -> BudgetPlan:
    """The largest r whose DePT adapter fits the budget of an l-token prompt: r = floor((l-m)d/(s+d))."""
    for name, value in (
        ("budget", budget_tokens),
        ("hidden_size", hidden_size),
        ("max_length", max_length),
        ("prompt_length", prompt_length),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if prompt_length >= budget_tokens:
        raise ValueError(
            f"prompt_length m={prompt_length} leaves nothing of the budget l={budget_tokens} "
            f"for the low-rank pair: need m < l"
        )
    rank = (budget_tokens - prompt_length) * hidden_size // (max_length + hidden_size)
    if rank < 1:
        raise ValueError(
            f"budget l={budget_tokens} with m={prompt_length}, d={hidden_size}, s={max_length} "
            f"leaves rank r=0: lower m or raise l (need (l-m)*d >= s+d)"
        )
    return BudgetPlan(
        prompt_length, rank, dept_count(prompt_length, rank, hidden_size, max_length), budget_tokens * hidden_size
    )


def largest_prompt_length(budget: int, d: int, s: int) -> int:
    """The largest m that leaves rank >= 1: (l - m) * d >= s + d."""
    return budget - -(-(s + d) // d)
