"""The sections a sweep spec adds to a run spec: `search`, `sweep`, `study`, `tracking`.

A sweep spec is a run spec (backbone, task, method, train, resources) whose prompt length, rank and
learning rates the search overrides per trial; `SweepSpec.base_run()` is the run it starts from.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    RootModel,
    TypeAdapter,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from typing_extensions import TypedDict

from deptune.methods.catalog import methods
from deptune.methods.config import PromptConfig
from deptune.spec_base import Range, StrictModel
from deptune.sweep.components import ASHAConfig, Sampler, Scheduler, TPEConfig
from deptune.tracking.config import TrackingConfig
from deptune.train.spec import RunSpec

MAX_TRIALS = 100_000
"""More trials than one execution can run (Tune keeps every trial of an execution in its driver)."""

SWEEP_SECTIONS = ("search", "sweep", "study", "tracking")

TRAINING_METRICS = ("objective", "train_loss", "step_time_s", "tokens_per_s", "peak_memory_mb", "eval_latency_ms")
"""Metrics every report holds besides `eval_<task metric>`; any of them can be an objective."""


class SearchConfig(RootModel[dict[str, Range]]):
    """What the search varies: a range for each dimension the method declares (`dimension_kinds`: its own,
    e.g. prompt_length and DePT's rank, and `lr_<group>` for each of its learning-rate groups). Omitted
    dimensions take the method's defaults (the paper's winners for the learning rates; DePT with a budget: m
    in [min(20, m_max), m_max], where m_max is the largest m that leaves rank >= 1, and r derived from m)."""

    model_config = ConfigDict(frozen=True)

    def ranges(self) -> dict[str, Range]:
        """The dimensions the spec gives (not the defaults): what the method checks and fills in."""
        return dict(self.root)


@functools.cache
def _search_adapter(method: type[PromptConfig]) -> TypeAdapter:
    """A method's search section as a typed mapping: each key parsed as the kind of range it declares."""
    return TypeAdapter(TypedDict(f"{method.__name__}Search", method.dimension_kinds(), total=False))  # type: ignore[operator]


def _search_of_the_method(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> SearchConfig:
    """Each key a dimension the method declares, parsed as the kind of range it takes."""
    method = info.data.get("method")
    if isinstance(value, SearchConfig) or method is None or not isinstance(value, dict):
        return handler(value)  # parsed already, or the method section's own error comes first
    refused, kinds = method.refused_search_keys(), type(method).dimension_kinds()
    value = {key: given for key, given in value.items() if given is not None}  # `key:` with no range: omitted
    for key in value:
        if key in refused:
            raise ValueError(f"search.{key}: {refused[key]}")
        if key not in kinds:
            raise ValueError(
                f"search.{key}: not a dimension of {method.name}; its dimensions: {', '.join(sorted(kinds))}"
            )
    return SearchConfig(_search_adapter(type(method)).validate_python(value))


class Objective(StrictModel):
    metric: str = Field(
        "objective",
        description="a reported metric: objective (the task's first metric), "
        "eval_<task metric>, " + ", ".join(TRAINING_METRICS[1:]),
    )
    mode: Literal["max", "min"] = "max"


class SweepConfig(StrictModel):
    trials: PositiveInt = Field(8, le=MAX_TRIALS, description="trials each execution adds to the study")
    max_concurrent: PositiveInt = Field(1, le=MAX_TRIALS, description="trials running at once (each uses `resources`)")
    objective: Objective = Objective()
    second_objective: Objective | None = Field(
        None,
        description="optional, e.g. {metric: step_time_s, mode: min}: a multi-objective search and its Pareto front",
    )
    sampler: Sampler = Field(TPEConfig(), description="how trials are chosen: {name: tpe|gp|random, ...}")
    scheduler: Scheduler = Field(ASHAConfig(), description="when trials stop early: {name: asha|fifo, ...}")
    seed: int = Field(0, description="the sampler's seed; each execution of the study derives its own from it")
    time_budget_s: PositiveFloat | None = Field(None, description="stop the execution after this many seconds")
    driver_cpus: PositiveFloat = Field(0.5, description="CPUs for each trial's driver (Ray rejects zero)")
    enqueue: list[dict[str, int | float]] = Field(
        default_factory=list,
        description="configurations to try first, e.g. "
        "the paper's: [{prompt_length: 60, lr_prompt: 0.3, lr_lowrank: 1e-4}]",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_startup_trials(cls, data: Any) -> Any:
        if isinstance(data, dict) and "startup_trials" in data:
            n = data["startup_trials"]
            raise ValueError(
                f"sweep.startup_trials: renamed, because it belongs to the sampler: write "
                f"`sampler: {{name: tpe, startup_trials: {n}}}` (gp takes it too; random has none)"
            )
        return data

    @property
    def objectives(self) -> list[Objective]:
        """The primary objective, then the second one if any: the study's directions, in order."""
        return [self.objective] + ([self.second_objective] if self.second_objective else [])


class StudyConfig(StrictModel):
    name: str | None = Field(None, min_length=1, description="Optuna study name (default: the spec file's stem)")
    storage: str | None = Field(
        None,
        description="RDB URL (sqlite:///..., postgresql://...); default "
        "$DEPTUNE_STUDY_STORAGE, else sqlite next to the run",
    )


class SweepSpec(RunSpec):
    """One YAML file = one sweep."""

    search: Annotated[SearchConfig, WrapValidator(_search_of_the_method)] = Field(
        default_factory=lambda: SearchConfig({})
    )
    sweep: SweepConfig = SweepConfig()
    study: StudyConfig = StudyConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _base_run_from_search(cls, data: Any) -> Any:
        return base_run_data(data)

    @model_validator(mode="after")
    def _search_fits_method(self) -> SweepSpec:
        ranges = self.search.ranges()
        refused = self.method.refused_search_keys()
        for key in ranges:
            if key in refused:
                raise ValueError(f"search.{key}: {refused[key]}")
        if errors := self.method.search_errors(ranges):
            raise ValueError(errors[0])
        for component in (self.sweep.sampler, self.sweep.scheduler):
            if problems := component.problems(self):
                raise ValueError(problems[0])
        known = type(self.method).dimension_kinds()
        for i, point in enumerate(self.sweep.enqueue):
            if unknown := set(point) - set(known):
                raise ValueError(f"sweep.enqueue.{i}: unknown parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        if self.sweep.second_objective and self.sweep.second_objective.metric == self.sweep.objective.metric:
            raise ValueError("sweep.second_objective.metric: must differ from sweep.objective.metric")
        return self

    def base_run(self) -> RunSpec:
        """The run a trial starts from (the spec's own sub-models, not re-validated from a dump)."""
        return RunSpec(**{key: getattr(self, key) for key in RunSpec.model_fields})

    def warnings(self) -> list[str]:
        """Settings that are valid but likely not what the user meant ('key.path: message')."""
        sweep, startup = self.sweep, self.sweep.sampler.startup
        if startup and sweep.trials <= startup:
            return [
                f"sweep.trials: {sweep.trials} trial(s) <= sweep.sampler.startup_trials ({startup}): a first "
                f"execution samples every trial at random and {sweep.sampler.name} never engages; raise "
                f"sweep.trials or lower sweep.sampler.startup_trials (later executions of the study build on "
                f"its trials)"
            ]
        return []


def base_run_data(data: Any) -> Any:
    """A searched m (or r) need not be fixed in the method section: the base run (`deptune train` on a
    sweep spec) takes the low end of its range, for the method fields the method has."""
    if (
        not isinstance(data, dict)
        or not isinstance(method := data.get("method"), dict)
        or not isinstance(search := data.get("search"), dict)
    ):
        return data
    registered = methods().get(method.get("name"))
    if registered is None:
        return data  # the method section's own validation names the problem
    method = dict(method)
    for key in ("prompt_length", "rank"):
        low = search[key].get("low") if isinstance(search.get(key), dict) else None
        if key in registered.config.model_fields and key not in method and isinstance(low, int) and low > 0:
            method[key] = low
    return {**data, "method": method}


STORAGE_ENV = "DEPTUNE_STUDY_STORAGE"


def storage_url(spec: SweepSpec) -> str:
    """The spec's study storage, else $DEPTUNE_STUDY_STORAGE, else sqlite next to the run (torch- and
    Optuna-free: `deptune validate` checks its form)."""
    url = spec.study.storage or os.environ.get(STORAGE_ENV)
    if not url:
        path = (spec.train.output_dir / "study.db").resolve()
        return f"sqlite:///{path}"
    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy's default driver would be psycopg2
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url
