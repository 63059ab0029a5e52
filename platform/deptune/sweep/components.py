"""The sampler and the scheduler a sweep spec names: `sweep.sampler: {name: tpe, ...}`, `sweep.scheduler:
{name: asha, ...}`.

Each is a component: a strict config class whose `name` default is its registered name, that checks what
it supports against the whole spec (`problems`) and builds the Optuna sampler or Tune scheduler (`build`).
A new one is a class and one `register_sampler` / `register_scheduler` line, beside the built-in ones
below. Optuna and Ray are imported only in `build`, so `deptune validate` stays free of both.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import Field, NonNegativeInt, PositiveInt, SerializeAsAny, WrapValidator

from deptune.spec_base import StrictModel

if TYPE_CHECKING:
    import optuna
    from ray.tune.schedulers import TrialScheduler


class SweepSpec(Protocol):
    """What a component reads of a sweep spec (`sweep.config.SweepSpec`, which imports this module: so it is
    named here by what it has, and no import runs either way)."""

    @property
    def sweep(self) -> Any: ...

    @property
    def train(self) -> Any: ...


class Component(StrictModel):
    """A registered part of a sweep: `name` picks the class, the other keys are its own."""

    name: str

    def problems(self, spec: SweepSpec) -> list[str]:
        """What this component cannot do with this spec ('key.path: message'), found before any Ray work."""
        return []


C = TypeVar("C", bound=Component)


class Catalog(Generic[C]):
    """Component classes of one kind by name; `annotated()` is the spec field that validates against them."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key, self._classes = kind, key, {}

    def register(self, cls: type[C]) -> type[C]:
        name = cls.model_fields["name"].default
        if not isinstance(name, str):
            raise TypeError(f"{cls.__name__}.name needs a default: the {self.kind}'s registered name")
        if self._classes.get(name, cls) is not cls:
            raise ValueError(f"a {self.kind} named {name!r} is registered already ({self._classes[name].__name__})")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def parse(self, value: Any, handler: Callable[[Any], Any]) -> C:
        if isinstance(value, Component):
            return value
        name = value.get("name") if isinstance(value, dict) else None
        if not isinstance(name, str) or name not in self._classes:
            got = f"unknown {self.kind} {name!r}" if isinstance(name, str) else "required"
            raise ValueError(f"{self.key}.name: {got}; known: {', '.join(self.names())}")
        return self._classes[name].model_validate(value)

    def annotated(self, base: type[C]) -> Any:
        return Annotated[SerializeAsAny[base], WrapValidator(self.parse)]


class SamplerConfig(Component):
    optuna_sampler: ClassVar[str] = ""
    """The class in `optuna.samplers` that `build` makes from `options`."""

    def options(self, seed: int, spec: SweepSpec) -> dict[str, Any]:
        """The keyword arguments of the Optuna sampler: what this spec asks of it."""
        return {"seed": seed}

    def build(self, seed: int, spec: SweepSpec) -> optuna.samplers.BaseSampler:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return getattr(optuna.samplers, self.optuna_sampler)(**self.options(seed, spec))

    @property
    def startup(self) -> int:
        """Trials sampled at random before the model engages (0: none)."""
        return 0


class SchedulerConfig(Component):
    implementation: ClassVar[str] = ""
    """The Tune scheduler class, "module:Class", imported when a sweep builds it (Ray stays out of validate)."""

    def options(self, spec: SweepSpec, journal_root: str | None) -> dict[str, Any]:
        """The keyword arguments of the scheduler class for this spec (`journal_root`: the trials' journals)."""
        return {}

    def build(self, spec: SweepSpec, journal_root: str | None) -> TrialScheduler:
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module), name)(**self.options(spec, journal_root))

    def params(self, spec: SweepSpec) -> dict[str, Any]:
        """What the sweep's parent run logs of this scheduler."""
        return {"scheduler": self.name}


SAMPLERS: Catalog[SamplerConfig] = Catalog("sampler", "sweep.sampler")
SCHEDULERS: Catalog[SchedulerConfig] = Catalog("scheduler", "sweep.scheduler")
register_sampler, register_scheduler = SAMPLERS.register, SCHEDULERS.register


@register_sampler
class TPEConfig(SamplerConfig):
    """Optuna's TPE (multivariate); several objectives too. With trials running at once, `constant_liar`
    (default: on when `sweep.max_concurrent > 1`) keeps concurrent trials from sampling the same point."""

    name: Literal["tpe"] = "tpe"
    optuna_sampler: ClassVar[str] = "TPESampler"
    startup_trials: NonNegativeInt = Field(4, description="trials sampled at random until the study has this many")
    constant_liar: bool | None = Field(None, description="default: on when sweep.max_concurrent > 1")

    @property
    def startup(self) -> int:
        return self.startup_trials

    def options(self, seed: int, spec: SweepSpec) -> dict[str, Any]:
        liar = spec.sweep.max_concurrent > 1 if self.constant_liar is None else self.constant_liar
        return {"seed": seed, "n_startup_trials": self.startup_trials, "multivariate": True, "constant_liar": liar}


@register_sampler
class GPConfig(SamplerConfig):
    """Optuna's Gaussian-process sampler (logEI; logEHVI with a second objective; q-batch with running
    trials): for few trials over continuous dimensions. Needs torch and scipy, which deptune has."""

    name: Literal["gp"] = "gp"
    optuna_sampler: ClassVar[str] = "GPSampler"
    startup_trials: NonNegativeInt = Field(4, description="trials sampled at random before the GP is fitted")
    deterministic_objective: bool = Field(False, description="true if a configuration always scores the same")

    @property
    def startup(self) -> int:
        return self.startup_trials

    def options(self, seed: int, spec: SweepSpec) -> dict[str, Any]:
        return {
            "seed": seed,
            "n_startup_trials": self.startup_trials,
            "deterministic_objective": self.deterministic_objective,
            "warn_independent_sampling": False,
        }


@register_sampler
class RandomConfig(SamplerConfig):
    """Uniform (log-uniform on log ranges) sampling: a baseline for the others."""

    name: Literal["random"] = "random"
    optuna_sampler: ClassVar[str] = "RandomSampler"


@register_scheduler
class ASHAConfig(SchedulerConfig):
    """Asynchronous successive halving: stops weak trials early (rungs that survive `--resume`)."""

    name: Literal["asha"] = "asha"
    implementation: ClassVar[str] = "deptune.sweep.schedulers:ASHA"
    grace_period: PositiveInt | None = Field(
        None, description="steps every trial trains before ASHA may stop it (default: two evaluations)"
    )
    reduction_factor: float = Field(3.0, gt=1, description="ASHA keeps 1/reduction_factor of the trials per rung")

    def grace(self, spec: SweepSpec) -> int:
        return self.grace_period or min(2 * spec.train.eval_every, spec.train.steps - 1)

    def problems(self, spec: SweepSpec) -> list[str]:
        if self.grace_period is not None and self.grace_period >= spec.train.steps:
            return [
                f"sweep.scheduler.grace_period: {self.grace_period} must be < train.steps ({spec.train.steps}), "
                f"else ASHA can never stop a trial"
            ]
        return []

    def options(self, spec: SweepSpec, journal_root: str | None) -> dict[str, Any]:
        primary = spec.sweep.objective
        return {
            "metric": primary.metric,
            "mode": primary.mode,
            "grace_period": self.grace(spec),
            "reduction_factor": self.reduction_factor,
            "max_t": spec.train.steps + 1,  # at max_t ASHA would stop a finishing trial
            "journal_root": journal_root,  # its rungs, rebuilt on --resume
        }

    def params(self, spec: SweepSpec) -> dict[str, Any]:
        return {"scheduler": self.name, "grace_period": self.grace(spec), "reduction_factor": self.reduction_factor}


@register_scheduler
class FIFOConfig(SchedulerConfig):
    """Every trial trains to the end."""

    name: Literal["fifo"] = "fifo"
    implementation: ClassVar[str] = "ray.tune.schedulers:FIFOScheduler"


Sampler = SAMPLERS.annotated(SamplerConfig)
Scheduler = SCHEDULERS.annotated(SchedulerConfig)
