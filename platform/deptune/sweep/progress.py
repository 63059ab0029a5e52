"""A sweep's trials as they go, in the sweep's own words (`TrialEvent`), for whoever listens in the driver
(the terminal's live view, plain lines in a job's log).

`SweepProgress` is a Tune callback that holds plain data only: Tune saves its callbacks with the experiment
and `--resume` restores them, so the listeners are registered in the driver process (`listening`), never
inside the callback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ray import tune

from deptune.sweep.trainable import DIVERGED, OPTUNA_TRIAL_KEY, RUN_KEY

Kind = Literal["started", "evaluated", "finished", "stopped", "failed"]


@dataclass(frozen=True)
class TrialEvent:
    """One moment of a trial: `started` (again, when `resumed_at` is a step), `evaluated`, and how it ended:
    `finished` (all its steps), `stopped` (by the scheduler, at `step`), `failed` (`reason`)."""

    kind: Kind
    number: int
    params: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    total_steps: int = 0
    objective: float | None = None
    best: float | None = None
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None
    resumed_at: int | None = None
    reason: str | None = None


Listener = Callable[[TrialEvent], None]
_LISTENERS: list[Listener] = []
_LOCK = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """`listener` hears every trial event of the sweeps this process drives while the block runs."""
    with _LOCK:
        _LISTENERS.append(listener)
    try:
        yield
    finally:
        with _LOCK:
            _LISTENERS.remove(listener)


def _tell(event: TrialEvent) -> None:
    with _LOCK:
        listeners = list(_LISTENERS)
    for listener in listeners:
        listener(event)


class SweepProgress(tune.Callback):
    """Tune's trial lifecycle, told as `TrialEvent`s. `demand`: what one trial holds ({"CPU": .., "GPU": ..}),
    so its cost is its results' seconds times what it holds, as the study counts it. A stopped trial's figure
    here is what it cost up to the stop; the study adds the evaluation it may have finished after it (the
    leaderboard's figure is final)."""

    def __init__(self, metric: str, mode: str, total_steps: int, demand: dict[str, float]) -> None:
        self.metric, self.mode, self.total_steps, self.demand = metric, mode, total_steps, dict(demand)
        self.seconds: dict[str, float] = {}  # per Tune trial: its results' seconds, summed as the study sums them
        self.timed: dict[str, tuple] = {}  # per Tune trial: the last result counted (its time stamps)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        last = trial.last_result or {}
        resumed = int(last["step"]) if isinstance(last.get("step"), (int, float)) else None
        _tell(self._event("started", trial, resumed_at=resumed))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._time(trial.trial_id, result)
        if DIVERGED not in result and self.metric in result:
            _tell(self._event("evaluated", trial, result))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        self._time(trial.trial_id, result)  # a last result callbacks were not told of counts too
        if DIVERGED in result:
            step = int(result[DIVERGED])
            _tell(self._event("failed", trial, result, reason=f"training diverged: non-finite loss at step {step}"))
            return
        step = result.get("step")
        ended = isinstance(step, (int, float)) and step >= self.total_steps
        _tell(self._event("finished" if ended else "stopped", trial, result))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        from deptune.sweep.searcher import summarise_error

        error_file = trial.error_file
        text = Path(error_file).read_text() if error_file and Path(error_file).is_file() else ""
        reason = summarise_error(text) if text else "the trial raised an error"
        _tell(self._event("failed", trial, trial.last_result or {}, reason=reason))

    def _time(self, trial_id: str, result: dict) -> None:
        """Add the result's seconds, once per result (as the study counts them)."""
        seconds, stamp = result.get("time_this_iter_s"), (result.get("timestamp"), result.get("time_total_s"))
        if isinstance(seconds, (int, float)) and self.timed.get(trial_id) != stamp:
            self.seconds[trial_id] = self.seconds.get(trial_id, 0.0) + float(seconds)
            self.timed[trial_id] = stamp

    def _event(self, kind: Kind, trial, result: dict | None = None, **extra: Any) -> TrialEvent:
        config = trial.config or {}
        result = result or {}
        wall = self.seconds.get(trial.trial_id)
        step = result.get("step")
        return TrialEvent(
            kind=kind,
            number=int(config.get(OPTUNA_TRIAL_KEY, -1)),
            params={k: v for k, v in config.items() if k not in (OPTUNA_TRIAL_KEY, RUN_KEY)},
            step=int(step) if isinstance(step, (int, float)) else None,
            total_steps=self.total_steps,
            objective=_number(result.get(self.metric)),
            best=_number(result.get(f"best_{self.metric}")),
            cpu_seconds=wall * self.demand.get("CPU", 0.0) if wall is not None else None,
            gpu_seconds=wall * self.demand.get("GPU", 0.0) if wall is not None else None,
            **extra,
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
