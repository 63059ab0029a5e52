"""The parent run's plots show the winner first: the slice coloured by the objective, the best finished trial
starred, integer parameters on integer ticks."""

from __future__ import annotations

import json
import random

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from deptune.tracking.plots import write_plots


def study_with_stops() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="plots")
    rng = random.Random(0)
    dists = {
        "prompt_length": IntDistribution(2, 14, step=2),
        "lr_prompt": FloatDistribution(0.01, 0.5, log=True),
        "lr_lowrank": FloatDistribution(1e-4, 1e-2, log=True),
    }
    for n in range(8):
        m = rng.choice([2, 4, 6, 8, 10, 12])
        params = {"prompt_length": m, "lr_prompt": 10 ** rng.uniform(-2, -0.3), "lr_lowrank": 10 ** rng.uniform(-4, -2)}
        value = 0.5 + 0.4 * rng.random()
        stopped = n % 3 == 1
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED if stopped else TrialState.COMPLETE,
                value=None if stopped else value,
                params=params,
                distributions=dists,
                intermediate_values={20: value - 0.1, 40 if stopped else 160: value},
                user_attrs={"rank": 16 - m},
            )
        )
    return study


def test_plots_colour_by_objective_and_star_the_winner(tmp_path):
    study = study_with_stops()
    written = write_plots(study, tmp_path)
    assert written == ["optimization_history", "parallel_coordinate", "slice"]
    assert all((tmp_path / f"{name}.png").stat().st_size > 10_000 for name in written)
    winner = study.best_trial  # the best that ran to its end (stopped trials are not in best_trial)
    history = json.loads((tmp_path / "optimization_history.json").read_text())["data"]
    star = next(t for t in history if t.get("name", "").startswith("best: trial"))
    assert star["name"] == f"best: trial {winner.number}"
    assert star["x"] == [winner.number] and star["y"] == [winner.value]
    assert [t["name"] for t in history if t.get("name", "").startswith("stopped")]  # stops are marked apart
    for trace in json.loads((tmp_path / "slice.json").read_text())["data"]:
        assert trace["marker"]["color"] == trace["y"], trace  # coloured by the objective, not the trial number
        assert trace["marker"]["colorscale"]
