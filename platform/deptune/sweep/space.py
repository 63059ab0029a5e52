"""The search space, budget-aware: with a budget l the search samples m and derives r so the adapter
costs what an l-token prompt costs (DESIGN §2); without one, m and r are independent dimensions.

`plan_search` resolves the spec against the backbone's hidden size d (defaults filled in, every range
checked for feasibility) into a `SearchPlan`, whose `suggest` is Optuna's define-by-run function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deptune.methods.budget import dept_count, mpt_count, prompt_tuning_count, rank_for_budget
from deptune.models import TINY_BACKBONES, BackboneConfig
from deptune.sweep.config import FloatRange, IntRange, SweepSpec

KNOWN_HIDDEN_SIZES = {
    "t5-small": 512, "t5-base": 768, "t5-large": 1024, "google-t5/t5-small": 512, "google-t5/t5-base": 768,
    "google-t5/t5-large": 1024, "google/t5-v1_1-base": 768, "google/t5-v1_1-large": 1024,
    "google/flan-t5-base": 768, "google/flan-t5-large": 1024, "gpt2": 768, "openai-community/gpt2": 768,
    "bert-base-uncased": 768, "google-bert/bert-base-uncased": 768,
    "sentence-transformers/all-MiniLM-L6-v2": 384, "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 2048,
    "meta-llama/Llama-3.2-1B": 2048, "Qwen/Qwen2.5-0.5B": 896,
}
"""Hidden sizes of the backbones our specs name, so `deptune validate` checks budgets offline."""
DEFAULT_UNBUDGETED_M = IntRange(low=20, high=100)
DEFAULT_RANK = IntRange(low=4, high=64, log=True)


def hidden_size(backbone: BackboneConfig) -> int | None:
    """d from a tiny config, a local model folder, the local HF cache or our table; None if unknown offline."""
    if backbone.name in TINY_BACKBONES:
        return backbone.tiny.hidden_size
    config_file = Path(backbone.name) / "config.json"
    if config_file.is_file():
        return _hidden_size_of(json.loads(config_file.read_text()))
    try:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(backbone.name, revision=backbone.revision, local_files_only=True)
        return _hidden_size_of(config.to_dict())
    except (OSError, ValueError):
        return KNOWN_HIDDEN_SIZES.get(backbone.name)


def _hidden_size_of(config: dict[str, Any]) -> int | None:
    for key in ("d_model", "hidden_size", "n_embd"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def largest_prompt_length(budget: int, d: int, s: int) -> int:
    """The largest m that leaves rank >= 1: (l - m) * d >= s + d."""
    return budget - -(-(s + d) // d)


@dataclass(frozen=True)
class SearchPlan:
    method: str
    hidden_size: int
    max_length: int  # s
    budget: int | None  # l
    prompt_length: IntRange | int  # a range is searched, an int is fixed
    rank: IntRange | int | None  # None: derived from the budget (DePT) or no rank at all (PT); MPT: fixed
    lr_prompt: FloatRange
    lr_lowrank: FloatRange | None
    lr_head: FloatRange | None

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample the dimensions, derive r, record m, r and the trainable count."""
        m = _suggest_int(trial, "prompt_length", self.prompt_length)
        params: dict[str, Any] = {"prompt_length": m}
        if self.method == "dept":
            if self.budget is not None:
                r = rank_for_budget(self.budget, self.hidden_size, self.max_length, m).rank
            else:
                r = _suggest_int(trial, "rank", self.rank)
            params["rank"] = r
        if self.lr_lowrank is not None:  # DePT's A, B; MPT's u, v
            params["lr_lowrank"] = trial.suggest_float("lr_lowrank", self.lr_lowrank.low, self.lr_lowrank.high,
                                                       log=self.lr_lowrank.log)
        params["lr_prompt"] = trial.suggest_float("lr_prompt", self.lr_prompt.low, self.lr_prompt.high,
                                                  log=self.lr_prompt.log)
        if self.lr_head is not None:
            params["lr_head"] = trial.suggest_float("lr_head", self.lr_head.low, self.lr_head.high,
                                                    log=self.lr_head.log)
        trial.set_user_attr("prompt_length", m)
        rank = params.get("rank", self.rank if isinstance(self.rank, int) else 0)  # MPT: fixed
        trial.set_user_attr("rank", rank)
        trial.set_user_attr("adapter_params", self.adapter_params(m, rank))
        if self.budget is not None:
            trial.set_user_attr("budget_params", self.budget * self.hidden_size)
        return params

    def adapter_params(self, m: int, r: int) -> int:
        """Prompt + low-rank pair (an encoder's head, trained too, is reported separately)."""
        if self.method == "dept":
            return dept_count(m, r, self.hidden_size, self.max_length)
        if self.method == "mpt":
            return mpt_count(m, r, self.hidden_size)
        return prompt_tuning_count(m, self.hidden_size)


def _suggest_int(trial, name: str, dim: IntRange | int) -> int:
    if isinstance(dim, int):
        return dim
    return trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)


def plan_search(spec: SweepSpec, d: int) -> tuple[SearchPlan | None, list[str]]:
    """Resolve the search against hidden size d: the plan, or the errors ('key.path: message')."""
    method, search, errors = spec.method, spec.search, []
    s = method.max_length
    budget = getattr(method, "budget", None)
    m_dim: IntRange | int = search.prompt_length or method.prompt_length
    rank: IntRange | int | None = None
    if method.name == "dept" and budget is not None:
        m_max = largest_prompt_length(budget, d, s)
        if m_max < 1:
            return None, [f"method.budget: l={budget} cannot hold a prompt and a rank-1 pair at d={d}, s={s} "
                          f"(needs l >= {1 + -(-(s + d) // d)})"]
        if search.prompt_length is None:
            m_dim = IntRange(low=min(20, m_max), high=m_max)
        elif search.prompt_length.high > m_max:
            errors.append(f"search.prompt_length.high: m={search.prompt_length.high} leaves rank 0 for budget "
                          f"l={budget} at d={d}, s={s}; the largest feasible m is {m_max}")
    elif method.name == "dept":
        m_dim = search.prompt_length or DEFAULT_UNBUDGETED_M
        rank = search.rank or DEFAULT_RANK
    elif method.name == "mpt":
        rank = method.rank
    if errors:
        return None, errors
    return SearchPlan(method=method.name, hidden_size=d, max_length=s, budget=budget, prompt_length=m_dim,
                      rank=rank, lr_prompt=search.lr_prompt,
                      lr_lowrank=search.lr_lowrank if method.name in ("dept", "mpt") else None,
                      lr_head=search.lr_head), []
