"""Optuna's plots of a study, as PNGs (shown inline by the MLflow UI) and one self-contained HTML page
(plotly.js embedded once: the UI is often offline, and a CDN script would leave it blank)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna

log = logging.getLogger(__name__)


def _plots(study: optuna.Study) -> dict[str, tuple[str, dict]]:
    """name -> (optuna.visualization function name, kwargs)."""
    multi = len(study.directions) > 1
    first = {"target": (lambda t: t.values[0]), "target_name": "objective"} if multi else {}
    plots = {"optimization_history": ("plot_optimization_history", first),
             "param_importances": ("plot_param_importances", first),
             "parallel_coordinate": ("plot_parallel_coordinate", first),
             "slice": ("plot_slice", first)}
    if multi:
        plots["pareto_front"] = ("plot_pareto_front", {"target_names": ["objective", "second objective"]})
    return plots


def write_plots(study: optuna.Study, folder: Path) -> list[str]:
    """Write `<name>.png` per plot and `optuna_plots.html`; a plot the study cannot make yet (too few
    finished trials) is skipped. Returns the names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as interactive
    import optuna.visualization.matplotlib as static
    folder.mkdir(parents=True, exist_ok=True)
    written, html = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, (function, kwargs) in _plots(study).items():
            try:
                axes = getattr(static, function)(study, **kwargs)
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                figure.set_size_inches(10, 6)
                figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
                plt.close(figure)
                page = getattr(interactive, function)(study, **kwargs)
                html.append(f"<h2>{name.replace('_', ' ')}</h2>"
                            + page.to_html(full_html=False, include_plotlyjs=not html))
                written.append(name)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                log.info("plot %s skipped: %s", name, exc)
    if html:
        (folder / "optuna_plots.html").write_text(
            f"<html><head><meta charset='utf-8'><title>{study.study_name}</title></head><body>"
            + "".join(html) + "</body></html>")
    return written
