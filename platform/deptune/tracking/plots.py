"""Optuna's plots of a study over every trial that reported, as PNGs (shown inline by the MLflow UI), the
plotly data as JSON, and one self-contained HTML page (plotly.js embedded once: the UI is often offline,
and a CDN script would leave it blank).

Optuna plots only COMPLETE trials, and ASHA stops most trials of a sweep: the plots are drawn from a view of
the study where a stopped trial counts with its best intermediate value, marked `stopped early` (a
`trial_state` axis in the parallel coordinates and the slice, crosses in the history). The view adds the
derived rank r as a dimension and puts learning rates on log axes. Parameter importances need at least
`MIN_IMPORTANCE_TRIALS` completed trials: with fewer, a random forest over a handful of points says nothing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)
MIN_IMPORTANCE_TRIALS = 10
STATE_PARAM = "trial_state"
COMPLETED, STOPPED = "completed", "stopped early"
WINNER_MARK = {"marker": "*", "s": 320, "color": "gold", "edgecolors": "black", "linewidths": 1.0, "zorder": 6}


def _reported(trial: FrozenTrial, maximize: bool) -> float | None:
    """A trial's value in the plots: its objective if it finished, its best intermediate value if stopped."""
    if trial.state == TrialState.COMPLETE and trial.values:
        return trial.values[0]
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return (max if maximize else min)(trial.intermediate_values.values())
    return None


def _distributions(trial: FrozenTrial, ranks: list[int]) -> tuple[dict, dict]:
    """The trial's params plus rank and state, with learning rates on a log scale."""
    params, dists = dict(trial.params), {}
    for name, dist in trial.distributions.items():
        if name.startswith("lr_") and isinstance(dist, FloatDistribution) and dist.low > 0 and not dist.log:
            dist = FloatDistribution(dist.low, dist.high, log=True)
        dists[name] = dist
    if "rank" not in params and trial.user_attrs.get("rank") is not None and any(ranks):
        params["rank"] = int(trial.user_attrs["rank"])
        dists["rank"] = IntDistribution(min(ranks), max(max(ranks), min(ranks) + 1))
    params[STATE_PARAM] = COMPLETED if trial.state == TrialState.COMPLETE else STOPPED
    dists[STATE_PARAM] = CategoricalDistribution([COMPLETED, STOPPED])
    return params, dists


def _memory_study(direction, name: str) -> optuna.Study:
    """An in-memory study, created without Optuna's "A new study created" line (a view is no news)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(direction=direction, study_name=name)
    finally:
        optuna.logging.set_verbosity(verbosity)


def view_study(study: optuna.Study) -> optuna.Study:
    """An in-memory, single-objective copy of `study` holding every trial that reported (see the module)."""
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    view = _memory_study("maximize" if maximize else "minimize", study.study_name)
    trials = study.get_trials(deepcopy=False)
    ranks = [int(t.user_attrs.get("rank") or 0) for t in trials]
    for trial in trials:  # the others go in as FAIL (not plotted), so trial numbers stay the study's
        params, dists = _distributions(trial, ranks)
        value = _reported(trial, maximize)
        view.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if value is not None else TrialState.FAIL,
                value=value,
                params=params,
                distributions=dists,
                user_attrs={"trial": trial.number, "state": trial.state.name},
            )
        )
    return view


def _reporting(view: optuna.Study) -> list[FrozenTrial]:
    return view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _completed_only(view: optuna.Study) -> optuna.Study:
    only = _memory_study(view.direction, view.study_name)
    for trial in _reporting(view):
        if trial.user_attrs["state"] == "COMPLETE":
            only.add_trial(trial)
    return only


def _winner(view: optuna.Study) -> FrozenTrial | None:
    """The best trial that ran to its end: the one a sweep registers."""
    finished = [t for t in _reporting(view) if t.user_attrs["state"] == "COMPLETE"]
    if not finished:
        return None
    return (max if view.direction == optuna.study.StudyDirection.MAXIMIZE else min)(finished, key=lambda t: t.value)


def _stopped_points(view: optuna.Study) -> tuple[list[int], list[float]]:
    stopped = [t for t in _reporting(view) if t.user_attrs["state"] == "PRUNED"]
    return [t.number for t in stopped], [t.value for t in stopped]


def _plots(study: optuna.Study, view: optuna.Study, metric: str) -> dict[str, tuple[str, optuna.Study, dict]]:
    """name -> (optuna.visualization function name, the study it draws, kwargs)."""
    named = {"target_name": metric}
    params = [p for p in {k for t in view.get_trials(deepcopy=False) for k in t.params} if p != STATE_PARAM]
    plots = {
        "optimization_history": ("plot_optimization_history", view, named),
        "parallel_coordinate": ("plot_parallel_coordinate", view, named),
        "slice": ("plot_slice", view, named),
    }
    completed = _completed_only(view)
    if len(completed.trials) >= MIN_IMPORTANCE_TRIALS:
        plots["param_importances"] = ("plot_param_importances", completed, {**named, "params": sorted(params)})
    if len(study.directions) > 1:
        plots["pareto_front"] = ("plot_pareto_front", study, {"target_names": [metric, "second objective"]})
    return plots


def _static(
    function: str,
    source: optuna.Study,
    kwargs: dict,
    stopped: tuple[list[int], list[float]],
    folder: Path,
    name: str,
    winner: FrozenTrial | None = None,
) -> None:
    """The matplotlib PNG: sized to its number of subplots, ticks rotated, stopped trials crossed out, the
    winner starred; the slice coloured by the objective, integer parameters on integer ticks."""
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as static
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    axes = getattr(static, function)(source, **kwargs)
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    figure = flat[0].figure
    figure.set_size_inches(max(10, 3.6 * len(flat)) if name == "slice" else 11, 5 if name == "slice" else 6)
    for ax in flat:
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for ax in figure.axes:  # log axes: 1-2-5 ticks as plain numbers (matplotlib's "2x10^-4 3x10^-4 ..." overlap)
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                axis.set_minor_formatter(NullFormatter())
    if name == "optimization_history" and stopped[0]:
        flat[0].scatter(
            *stopped, marker="x", s=70, color="crimson", zorder=5, label="stopped early (best value before the stop)"
        )
    if name == "optimization_history":
        flat[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        flat[0].tick_params(axis="x", labelrotation=0)
        if winner is not None:
            flat[0].scatter(
                [winner.user_attrs["trial"]],
                [winner.value],
                **WINNER_MARK,
                label=f"best: trial {winner.user_attrs['trial']}",
            )
        flat[0].legend()
    if name == "slice":
        _slice_by_objective(figure, flat, winner, kwargs.get("target_name", "objective"))
    figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def _slice_by_objective(figure, axes: list, winner: FrozenTrial | None, metric: str) -> None:
    """Each point coloured by its value (Optuna colours by trial number: the eye looks for the best, not the
    latest), the winner starred on every parameter's axis, integer parameters (m, r) on integer ticks."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    for extra in [ax for ax in figure.axes if ax not in axes]:  # Optuna's colour bar of trial numbers
        extra.remove()
    values = [v for ax in axes for c in ax.collections for v in np.asarray(c.get_offsets())[:, 1]]
    if not values:
        return
    mappable = None
    for ax in axes:
        for collection in ax.collections:
            collection.set_array(np.asarray(collection.get_offsets())[:, 1])
            collection.set_cmap("viridis")
            collection.set_clim(min(values), max(values))
            mappable = collection
        param = ax.get_xlabel()
        distribution = winner.distributions.get(param) if winner is not None else None
        if isinstance(distribution, IntDistribution):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if winner is not None and param in winner.params and param != STATE_PARAM:
            ax.scatter([winner.params[param]], [winner.value], **WINNER_MARK)
    if mappable is not None:
        figure.colorbar(mappable, ax=axes, label=metric, fraction=0.02, pad=0.02)


def _interactive(
    function: str,
    source: optuna.Study,
    kwargs: dict,
    stopped: tuple[list[int], list[float]],
    name: str,
    winner: FrozenTrial | None = None,
):
    import optuna.visualization as interactive
    import plotly.graph_objects as go

    figure = getattr(interactive, function)(source, **kwargs)
    if name == "optimization_history" and stopped[0]:
        figure.add_trace(
            go.Scatter(
                x=stopped[0],
                y=stopped[1],
                mode="markers",
                name="stopped early (best value before the stop)",
                marker={"symbol": "x", "size": 11, "color": "crimson"},
            )
        )
    if name == "optimization_history" and winner is not None:
        figure.add_trace(
            go.Scatter(
                x=[winner.user_attrs["trial"]],
                y=[winner.value],
                mode="markers",
                name=f"best: trial {winner.user_attrs['trial']}",
                marker={"symbol": "star", "size": 18, "color": "gold", "line": {"color": "black", "width": 1}},
            )
        )
        figure.update_xaxes(dtick=1)
    if name == "slice":
        figure.update_xaxes(tickangle=30, nticks=5)
        for i, trace in enumerate(figure.data):  # coloured by the objective, as the PNG
            trace.marker.color, trace.marker.colorscale, trace.marker.showscale = trace.y, "Viridis", i == 0
    return figure


def warm_imports() -> None:
    """Import the plotting libraries (about a second) ahead of `write_plots`, off the sweep's critical path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import optuna.visualization
    import optuna.visualization.matplotlib  # noqa: F401
    import plotly.graph_objects  # noqa: F401


def write_plots(study: optuna.Study, folder: Path, metrics: list[str] | None = None) -> list[str]:
    """Write `<name>.png` and `<name>.json` (plotly's figure) per plot and `optuna_plots.html`; a plot the
    study cannot make yet is skipped, and the page says why importances are missing. Returns the names
    written."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    metric = (metrics or ["objective"])[0]
    view = view_study(study)
    stopped, winner = _stopped_points(view), _winner(view)
    written, html = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, (function, source, kwargs) in _plots(study, view, metric).items():
            try:
                _static(function, source, kwargs, stopped, folder, name, winner)
                figure = _interactive(function, source, kwargs, stopped, name, winner)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                log.info("plot %s skipped: %s", name, exc)
                continue
            (folder / f"{name}.json").write_text(figure.to_json())
            html.append(
                f"<h2>{name.replace('_', ' ')}</h2>" + figure.to_html(full_html=False, include_plotlyjs=not html)
            )
            written.append(name)
    completed = sum(t.user_attrs["state"] == "COMPLETE" for t in _reporting(view))
    header = (
        f"<p>{len(_reporting(view))} trials reported: {completed} completed, {len(stopped[0])} stopped early "
        f"(plotted with their best value before the stop, marked <i>{STOPPED}</i>).</p>"
    )
    if "param_importances" not in written:
        header += (
            f"<p>Parameter importances need at least {MIN_IMPORTANCE_TRIALS} completed trials; this "
            f"study has {completed}.</p>"
        )
    if html:
        (folder / "optuna_plots.html").write_text(
            f"<html><head><meta charset='utf-8'><title>{study.study_name}</title></head><body>"
            f"<h1>{study.study_name}</h1>{header}" + "".join(html) + "</body></html>"
        )
    return written
