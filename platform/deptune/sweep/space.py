"""The search space of a sweep: the method's dimensions resolved against the backbone's hidden size d.

`plan_search` asks the method (`PromptConfig.dimensions`) what it searches, with defaults filled in and
every range checked for feasibility; `SearchPlan.suggest` is Optuna's define-by-run function. Nothing
here knows a method by name: DePT's budget (sample m, derive r) lives in DePT's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deptune.methods.config import LR_PREFIX, Dimension, PromptConfig
from deptune.spec_base import FloatRange, IntRange
from deptune.sweep.config import SweepSpec
from deptune.train.spec import RunSpec


@dataclass(frozen=True)
class SearchPlan:
    method: PromptConfig
    hidden_size: int
    dimensions: dict[str, Dimension]  # a range is searched, an int is fixed

    @property
    def prompt_length(self) -> Dimension:
        return self.dimensions["prompt_length"]

    @property
    def rank(self) -> Dimension | None:
        """Searched (DePT without a budget), fixed (MPT), or None: derived from m (DePT's budget) or none (PT)."""
        return self.dimensions.get("rank", getattr(self.method, "rank", None))

    @property
    def searched(self) -> dict[str, IntRange | FloatRange]:
        return {k: v for k, v in self.dimensions.items() if isinstance(v, (IntRange, FloatRange))}

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample the dimensions, derive the rest (DePT's r), record m, r and the
        trainable count as user attributes."""
        values: dict[str, Any] = {}
        for name, dim in self.dimensions.items():
            if isinstance(dim, IntRange):
                values[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)
            elif isinstance(dim, FloatRange):
                values[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
            else:
                values[name] = dim
        values.update(self.method.derived(values, self.hidden_size))
        trial.set_user_attr("prompt_length", values["prompt_length"])
        trial.set_user_attr("rank", values.get("rank") or getattr(self.method, "rank", None) or 0)
        trial.set_user_attr("adapter_params", self.adapter_params(values["prompt_length"], values.get("rank")))
        if (budget := self.method.budget_params(self.hidden_size)) is not None:
            trial.set_user_attr("budget_params", budget)
        return values

    def adapter_params(self, prompt_length: int, rank: int | None = None) -> int:
        """Prompt + low-rank pair at these values (an encoder's head, trained too, is reported apart)."""
        return self.method.adapter_params({"prompt_length": prompt_length, "rank": rank}, self.hidden_size)

    def effective_search(self) -> dict[str, Any]:
        """What the search really varies (defaults included), as plain data for the parent run."""
        return {k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in self.dimensions.items()}


def plan_search(spec: SweepSpec, d: int) -> tuple[SearchPlan | None, list[str]]:
    """Resolve the search against hidden size d: the plan, or the errors ('key.path: message')."""
    dims, errors = spec.method.dimensions(spec.search.ranges(), d)
    if errors:
        return None, errors
    return SearchPlan(method=spec.method, hidden_size=d, dimensions=dims), []


def trial_spec(spec: SweepSpec, params: dict[str, Any]) -> RunSpec:
    """The sweep's base run with the trial's values: the method's fields (m, r, a method's own dimension) go
    to the method section, each `lr_<group>` to the train section's rates."""
    base = spec.base_run()
    method = {k: v for k, v in params.items() if k in type(base.method).model_fields}
    rates = {k.removeprefix(LR_PREFIX): v for k, v in params.items() if k.startswith(LR_PREFIX) and k not in method}
    return base.model_copy(
        update={
            "method": base.method.model_copy(update=method),
            "train": base.train.model_copy(update={"lr": {**base.train.lr, **rates}}),
        }
    )
