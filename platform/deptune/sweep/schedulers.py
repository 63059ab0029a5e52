"""Trial schedulers: when Tune stops a trial early.

`ASHA` is Tune's asynchronous successive halving (`AsyncHyperBandScheduler`, one bracket) with rungs that
survive a restart. Tune saves the searcher with the experiment but not the scheduler: a restored sweep
would start with empty rungs and judge each resumed trial afresh at its first report, stopping trials at
steps that are no rung and that an uninterrupted sweep would have let go on. This one, once restored,
rebuilds its rungs from the evaluations every trial journaled (those Tune never delivered too) and then
decides exactly as before: at each rung (grace_period x reduction_factor^k steps) a trial goes on only if
its objective is within the best 1/reduction_factor of the values recorded there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from deptune.sweep.trainable import RUN_KEY
from deptune.tracking.record import MADE_AT, evaluations, recorded_trials


class ASHA(FIFOScheduler):
    def __init__(
        self,
        metric: str,
        mode: str,
        grace_period: int,
        reduction_factor: float,
        max_t: int,
        time_attr: str = "step",
        journal_root: str | None = None,
    ) -> None:
        super().__init__()
        self._metric, self.sign, self.time_attr, self.max_t = metric, 1.0 if mode == "max" else -1.0, time_attr, max_t
        self.rf, self.journal_root = reduction_factor, journal_root
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (grace_period * reduction_factor**k, {}) for k in reversed(range(count))
        ]  # highest first
        self.stopped = 0
        self.decided: set[str] = set()  # runs a rebuild found stopped
        self._restored = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._restored = True  # unpickled from Tune's saved experiment: rebuild before the next decision

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # the sweep's objective, given at construction

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._rebuild()
        if self.time_attr not in result or self.metric not in result:
            return TrialScheduler.CONTINUE
        run_id = (trial.config or {}).get(RUN_KEY, trial.trial_id)  # a trial started again keeps its first id
        if run_id in self.decided:  # stopped before the driver died: it stays stopped
            return TrialScheduler.STOP
        action = self.judge(run_id, result[self.time_attr], result[self.metric])
        self.stopped += action == TrialScheduler.STOP
        return action

    def judge(self, trial_id: str, step: float, value: float | None) -> str:
        """Tune's `_Bracket.on_result`: the highest rung this report reaches that the trial has not been
        judged at yet judges it (and records its value)."""
        value = None if value is None or not math.isfinite(value) else self.sign * value
        for milestone, recorded in self.rungs:
            if step < milestone or trial_id in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            stop = cutoff is not None and value is not None and value < cutoff
            if value is not None:
                recorded[trial_id] = value
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    def _rebuild(self) -> None:
        """The rungs as the uninterrupted sweep left them: every trial's journaled evaluations replayed in the
        order they were made, with the decisions made then (a trial stopped is not judged again)."""
        if not self._restored:
            return
        self._restored = False
        for _, recorded in self.rungs:
            recorded.clear()
        if not self.journal_root:
            return
        made = [
            (m[MADE_AT], trial_id, step, m[self.metric])
            for trial_id in recorded_trials(self.journal_root)
            for step, m in evaluations(self.journal_root, trial_id).items()
            if self.metric in m
        ]
        self.decided = set()
        for _, trial_id, step, value in sorted(made):
            if trial_id not in self.decided and self.judge(trial_id, step, value) == TrialScheduler.STOP:
                self.decided.add(trial_id)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{m:g}: {len(r)}" for m, r in reversed(self.rungs))
        return f"ASHA: {self.stopped} stopped; values recorded per rung {rungs}"
