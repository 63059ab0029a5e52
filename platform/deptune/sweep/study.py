"""The persistent Optuna study behind a sweep: its RDB storage, its executions, and what it says at the end.

The study outlives any one execution (`deptune sweep` run): a second execution of the same spec loads it,
so the sampler sees every earlier trial (warm start) and adds its own. Each execution is recorded in the
study's user attributes with the spec's hash and the sampler seed it derived (a fixed seed would replay
the same configurations).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from deptune.spec_base import SpecError, derive_seed, redact
from deptune.sweep.config import STORAGE_ENV, SweepSpec, storage_url  # noqa: F401 -- defined beside the spec, used from here too

SHOWN_APART = ("prompt_length", "rank")
"""Shown from the trials' attributes (a derived r too), not among the other searched parameters."""


def searched_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """The parameters the trials searched besides m and r (learning rates, a method's own dimensions)."""
    return sorted({key for t in trials for key in t.params if key not in SHOWN_APART})


def open_storage(url: str, source: str = "<spec>") -> RDBStorage:
    """Connect (and create the schema) now, so a bad URL fails before any Ray work."""
    if "://" not in url:
        raise SpecError(
            source, [f"study.storage: {redact(url)!r} is not a database URL (sqlite:///path, postgresql://...)"]
        )
    try:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
    except Exception as exc:  # noqa: BLE001 -- sqlalchemy raises many kinds; the message is what the user needs
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(source, [f"study.storage: cannot open {redact(url)}: {redact(first)}"]) from None


def directions(spec: SweepSpec) -> list[str]:
    objectives = spec.sweep.objectives
    return ["maximize" if o.mode == "max" else "minimize" for o in objectives]


def spec_hash(spec: SweepSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Execution:
    number: int
    name: str  # the Tune experiment's name
    seed: int
    spec_hash: str


def load_study(spec: SweepSpec, storage: RDBStorage) -> optuna.Study:
    """Create the study or load it; its directions must be the spec's."""
    name = spec.study.name or "deptune"
    wanted = directions(spec)
    study = optuna.create_study(storage=storage, study_name=name, directions=wanted, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != wanted:
        raise SpecError(
            "study.name",
            [
                f"study.name: study {name!r} in this storage optimises {have}, the spec "
                f"asks {wanted}; use another study name"
            ],
        )
    return study


def executions(study: optuna.Study) -> list[Execution]:
    return [Execution(**e) for e in study.user_attrs.get("executions", [])]


def sampler_seed(seed: int, number: int, taken: Collection[int] = ()) -> int:
    """Execution `number`'s sampler seed: derived from the spec's `seed` (any integer) and `number` into
    the range Optuna's samplers take, and unlike the seeds `taken` by earlier executions (a fixed seed would
    replay their configurations)."""
    salt = 0
    while (derived := derive_seed(seed, number, *([salt] if salt else []))) in taken:
        salt += 1
    return derived


def start_execution(spec: SweepSpec, study: optuna.Study) -> Execution:
    """Record a new execution: number n, sampler seed derived from the spec's seed and n."""
    done = executions(study)
    number = len(done) + 1
    execution = Execution(
        number=number,
        name=f"{study.study_name}-{number:03d}",
        seed=sampler_seed(spec.sweep.seed, number, {e.seed for e in done}),
        spec_hash=spec_hash(spec),
    )
    study.set_user_attr("executions", [e.__dict__ for e in done] + [execution.__dict__])
    return execution


def resume_problem(url: str, study_name: str) -> str | None:
    """Why `--resume` has nothing to continue in the storage at `url` (no database, no such study, a study
    without executions), found by reading only: a resume that is refused creates no database, no study and
    no tables. None when there is an execution to look at."""
    from sqlalchemy import create_engine, inspect

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return f"study {study_name!r} has never run: there is no study database {url.removeprefix('sqlite:///')}"
    engine = create_engine(url, connect_args={"connect_timeout": 10} if url.startswith("postgresql") else {})
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("studies"):
                return f"study {study_name!r} has never run: {redact(url)} holds no Optuna study"
    except Exception as exc:  # noqa: BLE001 -- drivers raise many kinds; the first line says what happened
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return f"cannot open {redact(url)}: {redact(first)}"
    finally:
        engine.dispose()
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return f"study {study_name!r} has never run in {redact(url)}"
    if not storage.get_study_user_attrs(study_id).get("executions"):
        return f"study {study_name!r} has no execution to resume"
    return None


def last_execution(spec: SweepSpec, study: optuna.Study) -> Execution:
    """The execution `--resume` continues; the spec must not have changed since."""
    done = executions(study)
    if not done:
        raise SpecError("--resume", [f"--resume: study {study.study_name!r} has no execution to resume"])
    last = done[-1]
    if last.spec_hash != spec_hash(spec):
        raise SpecError(
            "--resume",
            [
                f"--resume: the spec changed since execution {last.number} started; run "
                f"without --resume to start a new execution of the study"
            ],
        )
    return last


def orphans(study: optuna.Study, execution: Execution) -> list[FrozenTrial]:
    """Trials of this execution still RUNNING in the study (their driver died)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("execution") == execution.number
    ]


def storage_trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` (what `optuna.Trial(study, id)` takes), from public storage calls."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def close_orphans(study: optuna.Study, storage: BaseStorage, execution: Execution, reason: str) -> int:
    stale = orphans(study, execution)
    for trial in stale:
        storage.set_trial_user_attr(storage_trial_id(storage, study.study_name, trial.number), "fail_reason", reason)
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


def trial_row(
    trial: FrozenTrial,
    metrics: tuple[str, ...] | list[str] = ("objective",),
    maximize: bool = True,
    params: Sequence[str] = (),
) -> dict[str, Any]:
    """One leaderboard row: the trial's state, parameters, derived rank, one column per objective (a stopped
    trial's best intermediate value, its state says it did not finish) and costs (GPU-seconds only when the
    trial had GPUs)."""
    attrs = trial.user_attrs
    values = list(trial.values) if trial.values else [None] * len(metrics)
    if trial.state == TrialState.PRUNED and trial.intermediate_values:  # Optuna stores the last one as its value
        values = [(max if maximize else min)(trial.intermediate_values.values()), *[None] * (len(metrics) - 1)]
    costs = {
        "cpu_seconds": attrs.get("cpu_seconds"),
        "wall_seconds": attrs.get("wall_seconds"),
        **({"gpu_seconds": attrs["gpu_seconds"]} if attrs.get("gpu_seconds") else {}),
    }
    return {
        "number": trial.number,
        "state": trial.state.name,
        "execution": attrs.get("execution"),
        "runner": attrs.get("runner"),
        "prompt_length": attrs.get("prompt_length"),
        "rank": attrs.get("rank"),
        **{key: trial.params.get(key) for key in params},
        **dict(zip(metrics, values)),
        "best_step": attrs.get("best_step"),
        "last_step": attrs.get("last_step"),
        "adapter_params": attrs.get("adapter_params"),
        "trainable_params": attrs.get("trainable_params"),
        **costs,
        "reason": attrs.get("fail_reason") or attrs.get("stop_reason"),
    }


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    return study.best_trials if len(study.directions) > 1 else []
