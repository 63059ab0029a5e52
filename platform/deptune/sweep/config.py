"""The sections a sweep spec adds to a run spec: `search`, `sweep`, `study`, `tracking`.

A sweep spec is a run spec (backbone, task, method, train, resources) whose prompt length, rank and
learning rates the search overrides per trial; `SweepSpec.base_run()` is the run it starts from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from deptune.config import RunSpec
from deptune.spec_base import StrictModel
from deptune.tracking.config import TrackingConfig

TRAINING_METRICS = ("objective", "train_loss", "step_time_s", "tokens_per_s", "peak_memory_mb", "eval_latency_ms")
"""Metrics every report holds besides `eval_<task metric>`; any of them can be an objective."""


class IntRange(StrictModel):
    low: PositiveInt
    high: PositiveInt
    step: PositiveInt = 1
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.step != 1:
            raise ValueError("log-scaled integer ranges take step 1")
        return self


class FloatRange(StrictModel):
    low: PositiveFloat
    high: PositiveFloat
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class SearchConfig(StrictModel):
    """What the search varies. With `method.budget` (DePT) the rank is derived from m, never searched;
    without one, m and r are independent. MPT searches l (unless a source adapter fixes it), lr_prompt
    for P* and lr_lowrank for its task vectors u, v; its rank is method.rank. Omitted dimensions take the
    defaults below (the paper's winners: lr_prompt 0.3-0.4, lr_lowrank 1e-4-5e-3) or, for m with a budget,
    [min(20, m_max), m_max] where m_max is the largest m that leaves rank >= 1."""

    prompt_length: IntRange | None = Field(None, description="m for DePT, l for prompt tuning")
    rank: IntRange | None = Field(None, description="r, DePT without a budget only (default 4-64, log)")
    lr_prompt: FloatRange = FloatRange(low=0.3, high=0.4)
    lr_lowrank: FloatRange = FloatRange(low=1e-4, high=5e-3)
    lr_head: FloatRange | None = Field(None, description="encoders' classification head (default: train.lr_head)")


class Objective(StrictModel):
    metric: str = Field("objective", description="a reported metric: objective (the task's first metric), "
                                                 "eval_<task metric>, " + ", ".join(TRAINING_METRICS[1:]))
    mode: Literal["max", "min"] = "max"


class SchedulerConfig(StrictModel):
    name: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early; fifo runs all")
    grace_period: PositiveInt | None = Field(None, description="steps every trial trains before ASHA may stop it "
                                                               "(default: two evaluations)")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA keeps 1/reduction_factor of the trials per rung")


class SweepConfig(StrictModel):
    trials: PositiveInt = Field(8, description="trials each execution adds to the study")
    max_concurrent: PositiveInt = Field(1, description="trials running at once (each uses `resources`)")
    objective: Objective = Objective()
    second_objective: Objective | None = Field(None, description="optional, e.g. {metric: step_time_s, mode: min}: "
                                                                 "a multi-objective search and its Pareto front")
    scheduler: SchedulerConfig = SchedulerConfig()
    seed: int = Field(0, description="the sampler's seed; each execution of the study derives its own from it")
    time_budget_s: PositiveFloat | None = Field(None, description="stop the execution after this many seconds")
    driver_cpus: PositiveFloat = Field(0.5, description="CPUs for each trial's driver (Ray rejects zero)")
    startup_trials: NonNegativeInt = Field(4, description="TPE samples at random until the study has this many")
    enqueue: list[dict[str, int | float]] = Field(default_factory=list, description="configurations to try first, e.g. "
                                            "the paper's: [{prompt_length: 60, lr_prompt: 0.3, lr_lowrank: 1e-4}]")


class StudyConfig(StrictModel):
    name: str | None = Field(None, description="Optuna study name (default: the spec file's stem)")
    storage: str | None = Field(None, description="RDB URL (sqlite:///..., postgresql://...); default "
                                                  "$DEPTUNE_STUDY_STORAGE, else sqlite next to the run")


class SweepSpec(RunSpec):
    """One YAML file = one sweep."""

    search: SearchConfig = SearchConfig()
    sweep: SweepConfig = SweepConfig()
    study: StudyConfig = StudyConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _base_run_from_search(cls, data: Any) -> Any:
        """A searched m (or, DePT without a budget, r) need not be fixed in the method section: the base run
        (`deptune train` on a sweep spec) takes the low end of its range."""
        if not isinstance(data, dict) or not isinstance(method := data.get("method"), dict) \
                or not isinstance(search := data.get("search"), dict):
            return data
        method = dict(method)
        for key in ("prompt_length", "rank"):
            if key == "rank" and (method.get("name") != "dept" or "budget" in method):
                continue
            low = search[key].get("low") if isinstance(search.get(key), dict) else None
            if key not in method and isinstance(low, int) and low > 0:
                method[key] = low
        return {**data, "method": method}

    @model_validator(mode="after")
    def _search_fits_method(self) -> "SweepSpec":
        fields = self.search.model_fields_set
        if self.method.name == "prompt_tuning":
            for key in ("rank", "lr_lowrank"):
                if key in fields:
                    raise ValueError(f"search.{key}: prompt_tuning has no low-rank pair; remove it")
        elif self.method.name == "mpt":
            if "rank" in fields:
                raise ValueError("search.rank: mpt's rank is method.rank (a source adapter fixes it); remove it")
            m = self.search.prompt_length
            if self.method.init_from is not None and m is not None and m.low != m.high:
                raise ValueError("search.prompt_length: the source adapter's P* (method.init_from) fixes l; "
                                 "remove it")
        elif self.method.budget is not None and self.search.rank is not None:
            raise ValueError("search.rank: the rank is derived from method.budget; remove search.rank or the budget")
        budget = getattr(self.method, "budget", None)
        if budget is not None and self.search.prompt_length is not None and self.search.prompt_length.high >= budget:
            raise ValueError(f"search.prompt_length.high: m={self.search.prompt_length.high} must be < method.budget "
                             f"(l={budget}): m = l leaves nothing for the low-rank pair")
        grace = self.sweep.scheduler.grace_period
        if grace is not None and grace >= self.train.steps:
            raise ValueError(f"sweep.scheduler.grace_period: {grace} must be < train.steps ({self.train.steps}), "
                             f"else ASHA can never stop a trial")
        searched = {"prompt_length", "rank", "lr_prompt", "lr_lowrank", "lr_head"}
        for i, point in enumerate(self.sweep.enqueue):
            if unknown := set(point) - searched:
                raise ValueError(f"sweep.enqueue.{i}: unknown parameter(s) {sorted(unknown)}; "
                                 f"known: {sorted(searched)}")
        if self.sweep.second_objective and self.sweep.second_objective.metric == self.sweep.objective.metric:
            raise ValueError("sweep.second_objective.metric: must differ from sweep.objective.metric")
        return self

    @property
    def grace_period(self) -> int:
        return self.sweep.scheduler.grace_period or min(2 * self.train.eval_every, self.train.steps - 1)

    def base_run(self) -> RunSpec:
        return RunSpec.model_validate(self.model_dump(include=set(RunSpec.model_fields)))
