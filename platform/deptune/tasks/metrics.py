"""Task metrics on verbalised labels, with DePT's conventions (its `src/metrics.py`).

Every metric takes stripped predictions and targets (strings) plus the task's label names and returns a
plain float on the 0-1 scale (DePT multiplies by 100; we report fractions like the synthetic task).
A prediction that is not a valid label never crashes a metric: it counts as wrong. No metric returns NaN:
where a correlation is undefined (a constant prediction, fewer than two examples) it is 0.0, as DePT does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

# scikit-learn and scipy are imported where they are used: each costs a second of CPU in every process
# that imports it, and every trial runs in a fresh Ray worker. Accuracy and binary F1 (the metrics of most
# tasks) are one counting line each, so they need neither; MCC, macro F1 and the correlations keep the
# libraries (test_tasks checks the counted ones against scikit-learn).

MetricFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], float]


def accuracy(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Exact string match: an invalid prediction never equals a target."""
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)


def f1_with_invalid(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Binary F1 of class "1"; a prediction other than "0"/"1" becomes the opposite of its target (T5/DePT).

    F1 = 2TP / (2TP + FP + FN), 0.0 when there is no positive at all (scikit-learn's `zero_division=0.0`).
    """
    fixed = [p if p in ("0", "1") else ("0" if t == "1" else "1") for p, t in zip(predictions, targets)]
    true_pos = sum(p == t == "1" for p, t in zip(fixed, targets))
    wrong = sum((p == "1") != (t == "1") for p, t in zip(fixed, targets))  # FP + FN
    return 2 * true_pos / (2 * true_pos + wrong) if true_pos + wrong else 0.0


def matthews_correlation(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """MCC on the raw strings as DePT does: an invalid prediction is one more (always wrong) class.

    scikit-learn returns 0.0 where MCC is undefined (a single predicted class), matching CoLA's flat start.
    """
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(list(targets), list(predictions)))


def f1_multiclass(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the task's labels (CB); invalid predictions are misses."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(targets), list(predictions), labels=list(labels), average="macro", zero_division=0.0))


def to_float(text: str, default: float = -1.0) -> float:
    """Parse a generated number; anything unparsable or non-finite becomes DePT's default of -1."""
    try:
        value = float(text)
    except ValueError:
        return default
    return value if math.isfinite(value) else default


def _correlation(fn: Callable, predictions: Sequence[str], targets: Sequence[str]) -> float:
    if len(targets) < 2:
        return 0.0
    with warnings.catch_warnings():  # scipy warns (and returns NaN) on a constant input
        warnings.simplefilter("ignore")
        value = float(fn([to_float(t) for t in targets], [to_float(p) for p in predictions])[0])
    return 0.0 if math.isnan(value) else value


def pearson(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Pearson r of float-parsed outputs; 0.0 where undefined (e.g. a constant prediction)."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, targets)


def spearman(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Spearman rho of float-parsed outputs; 0.0 where undefined (e.g. a constant prediction)."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, targets)


METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "f1": f1_with_invalid,
    "matthews_correlation": matthews_correlation,
    "f1_multiclass": f1_multiclass,
    "pearson": pearson,
    "spearmanr": spearman,
}


def compute(
    metric_names: Sequence[str], predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    """All named metrics after stripping whitespace from both sides, as DePT's post-processor does."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("no predictions to score")
    preds = [str(p).strip() for p in predictions]
    golds = [str(t).strip() for t in targets]
    return {name: METRICS[name](preds, golds, labels) for name in metric_names}
