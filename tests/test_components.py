"""Samplers and schedulers are components: each named in the spec, built from it, checked against it, and a
new one is one registration line (no Ray here: the fast lane)."""

from __future__ import annotations

from typing import ClassVar, Literal

import optuna
import pytest
from pydantic import PositiveInt
from ray.tune.schedulers import FIFOScheduler

from deptune.spec_base import SpecError
from deptune.specs import parse_spec
from deptune.sweep.components import SAMPLERS, SCHEDULERS, SamplerConfig, register_sampler
from deptune.sweep.config import SweepSpec
from deptune.sweep.schedulers import ASHA


def spec(**sweep) -> SweepSpec:
    return parse_spec(
        {
            "backbone": {"name": "tiny-bert"},
            "task": {"name": "synthetic"},
            "method": {"name": "dept", "prompt_length": 4, "rank": 2},
            "train": {"steps": 40, "eval_every": 10, "warmup_steps": 2},
            "sweep": {"trials": 8, **sweep},
        },
        kind=SweepSpec,
    )


def test_the_default_is_tpe_with_asha():
    sweep = spec().sweep
    assert (sweep.sampler.name, sweep.sampler.startup_trials, sweep.scheduler.name) == ("tpe", 4, "asha")


@pytest.mark.parametrize(
    ("section", "kind", "options"),
    [
        (
            {"name": "tpe", "startup_trials": 3},
            optuna.samplers.TPESampler,
            {"seed": 7, "n_startup_trials": 3, "multivariate": True, "constant_liar": False},
        ),
        (
            {"name": "gp", "startup_trials": 2},
            optuna.samplers.GPSampler,
            {"seed": 7, "n_startup_trials": 2, "deterministic_objective": False, "warn_independent_sampling": False},
        ),
        ({"name": "random"}, optuna.samplers.RandomSampler, {"seed": 7}),
    ],
)
def test_each_sampler_builds_the_optuna_sampler_its_section_names(section, kind, options):
    built = spec(sampler=section)
    assert built.sweep.sampler.options(7, built) == options
    assert type(built.sweep.sampler.build(7, built)) is kind


@pytest.mark.parametrize(("concurrent", "liar"), [(1, False), (3, True)])
def test_tpe_lies_constantly_only_when_trials_run_at_once(concurrent, liar):
    built = spec(max_concurrent=concurrent)
    assert built.sweep.sampler.options(0, built)["constant_liar"] is liar
    forced = spec(max_concurrent=concurrent, sampler={"name": "tpe", "constant_liar": True})
    assert forced.sweep.sampler.options(0, forced)["constant_liar"] is True


def test_gp_takes_a_second_objective():
    built = spec(sampler={"name": "gp"}, second_objective={"metric": "step_time_s", "mode": "min"})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=built.sweep.sampler.build(0, built))
    for _ in range(3):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, [x, x * x])
    assert len(study.best_trials) >= 1


def test_schedulers_build_asha_with_its_rungs_or_fifo():
    asha = spec(scheduler={"name": "asha", "grace_period": 10, "reduction_factor": 2})
    built = asha.sweep.scheduler.build(asha, None)
    assert isinstance(built, ASHA) and [m for m, _ in built.rungs] == [40, 20, 10]
    assert asha.sweep.scheduler.params(asha) == {"scheduler": "asha", "grace_period": 10, "reduction_factor": 2.0}
    fifo = spec(scheduler={"name": "fifo"})
    assert type(fifo.sweep.scheduler.build(fifo, None)) is FIFOScheduler


def test_asha_grace_defaults_to_two_evaluations_and_must_leave_room():
    built = spec()
    assert built.sweep.scheduler.grace(built) == 20
    with pytest.raises(SpecError, match=r"sweep.scheduler.grace_period: 40 must be < train.steps \(40\)"):
        spec(scheduler={"name": "asha", "grace_period": 40})


def test_the_startup_warning_follows_the_sampler():
    assert (
        "sweep.sampler.startup_trials (8)" in spec(trials=8, sampler={"name": "gp", "startup_trials": 8}).warnings()[0]
    )
    assert spec(trials=2, sampler={"name": "random"}).warnings() == []


def test_a_name_registered_twice_is_an_error():
    class OtherTPE(SamplerConfig):
        name: Literal["tpe"] = "tpe"

    with pytest.raises(ValueError, match="a sampler named 'tpe' is registered already"):
        register_sampler(OtherTPE)
    assert SAMPLERS.names() == ["gp", "random", "tpe"] and SCHEDULERS.names() == ["asha", "fifo"]


class QMCConfig(SamplerConfig):
    """A sampler defined in a test: one class, one registration line."""

    name: Literal["qmc_test"] = "qmc_test"
    optuna_sampler: ClassVar[str] = "QMCSampler"
    scramble_seed_offset: PositiveInt = 1

    def options(self, seed, spec):
        return {"seed": seed + self.scramble_seed_offset, "warn_independent_sampling": False}


def test_a_sampler_registered_in_one_line_is_named_by_a_spec():
    register_sampler(QMCConfig)
    register_sampler(QMCConfig)  # the same class again (a module imported twice) is no conflict
    built = spec(sampler={"name": "qmc_test", "scramble_seed_offset": 2})
    assert isinstance(built.sweep.sampler, QMCConfig)
    assert type(built.sweep.sampler.build(0, built)) is optuna.samplers.QMCSampler
    with pytest.raises(SpecError, match="sweep.sampler.scramble_seed_offset"):
        spec(sampler={"name": "qmc_test", "scramble_seed_offset": 0})


@pytest.mark.parametrize(("cpus", "threads"), [(0.25, 1), (0.75, 1), (1.0, 1), (1.5, 2), (1.75, 2), (2.0, 2), (3.4, 3)])
def test_a_worker_trains_on_the_nearest_whole_number_of_the_cpus_it_holds(cpus, threads):
    from deptune.cluster.fit import threads_for

    assert threads_for(cpus) == threads
