"""GLUE and SuperGLUE as text-to-text tasks, exactly as the DePT code formats, labels and scores them.

Reference: ZhengxiangShi/DePT `src/tasks.py` (inherited from ATTEMPT / compacter) and `src/metrics.py`.
- Source: "field1: text1 field2: text2 ...", the field names being the hub's column names, no task prefix
  (DePT's `add_prefix` defaults to False). Target: the hub's label id as a string ("0", "1", "2").
- STS-B is regression: the score rounded to one decimal as a string ("3.7"), the official code's
  `np.round((label * 5) / 5, decimals=1)` (its docstring says "nearest 0.2", but the expression, which
  produced the paper's numbers, rounds to the 0.1 grid; numpy's rounding kept) on the hub's float32 label:
  a score read from a file is cast to float32 first, so files and the hub give the same strings.
- metric_names[0] is what DePT selects checkpoints by (`TASK_TO_METRICS[task][0]` in its train.py);
  paper_metric is what Table 1 reports (Matthews corr. for CoLA, Pearson for STS-B, F1 for MultiRC,
  accuracy for every other task, CB included), shown beside the selection metric.
- split_rule is DePT's: "small" tasks halve the official validation set into validation/test, "large"
  tasks hold 1,000 training rows out as validation and test on the official validation set, "given"
  (MNLI, in neither of DePT's lists) uses validation_mismatched to select and validation_matched to test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from deptune.tasks import metrics
from deptune.tasks.base import Example

SplitRule = Literal["small", "large", "given"]
GLUE_HUB = "nyu-mll/glue"
SUPER_GLUE_HUB = "aps/super_glue"
BOOL_CLASSES = ("False", "True")  # SuperGLUE's ClassLabel names for boolean answers


@dataclass(frozen=True)
class TextTask:
    """One benchmark task; implements the `Task` protocol from a table entry."""

    name: str
    inputs: tuple[str, ...]  # row fields shown to the model, in order, each as "field: text"
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    split_rule: SplitRule
    hub: tuple[str, str]  # (dataset id, config name)
    class_names: tuple[str, ...] = ()  # the hub's label names, so string labels in files map to ids
    extra_fields: tuple[str, ...] = ()  # fields `prepare` needs besides the inputs
    prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    official_splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation"})
    is_regression: bool = False
    paper_metric: str = ""  # default: metric_names[0]

    def __post_init__(self) -> None:
        if not self.paper_metric:
            object.__setattr__(self, "paper_metric", self.metric_names[0])
        if self.paper_metric not in self.metric_names:
            raise ValueError(f"{self.name}: paper_metric {self.paper_metric!r} is not one of {self.metric_names}")

    @property
    def fields(self) -> tuple[str, ...]:
        """Every row field `format` reads: what a data file must provide."""
        return self.inputs + self.extra_fields + ("label",)

    def format(self, row: Mapping[str, Any]) -> Example:
        missing = [f for f in self.fields if row.get(f) is None]
        if missing:
            raise ValueError(f"{self.name}: row lacks field(s) {', '.join(missing)}")
        row = self.prepare(row) if self.prepare else row
        source = " ".join(f"{name}: {row[name]}" for name in self.inputs)
        return Example(source=source, target=self.verbalise(row["label"]))

    def format_all(self, row: Mapping[str, Any]) -> list[Example]:
        """The examples of one row (one here; ReCoRD makes one per answer)."""
        return [self.format(row)]

    def verbalise(self, label: Any) -> str:
        """The target string of a raw label (an id, a bool, a digit string or a class name)."""
        if self.is_regression:
            return stsb_target(label)
        text = str(label).strip()
        index = self.class_names.index(text) if text in self.class_names else _as_int(text)
        if index is None or not 0 <= index < len(self.label_names):
            raise ValueError(
                f"{self.name}: label {label!r} is not one of {list(self.label_names)}"
                + (f" or {list(self.class_names)}" if self.class_names else "")
            )
        return self.label_names[index]

    def compute_metrics(self, predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
        return metrics.compute(self.metric_names, predictions, targets, self.label_names)


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def stsb_target(score: Any) -> str:
    """STS-B's score as the official DePT code writes it (src/tasks.py, `round_stsb_target`):
    `str(np.round((label * 5) / 5, decimals=1))` on the label as the hub stores it, a float32 that `datasets`
    yields as a Python float. A score from a file ("1.150", read as a float64) is cast to float32 first, as the
    hub's GLUE builder cast it, so every source gives the official string: 3.85 -> "3.8", 2.25 -> "2.2" (an
    exact half, to even), 1.15 -> "1.1" (float32 1.1499999...; the float64 1.15 would round to "1.2")."""
    import numpy as np  # deferred: only STS-B needs it

    label = float(np.float32(float(score)))
    return f"{float(np.round((label * 5) / 5, decimals=1)):.1f}"


def remove_markup(row: Mapping[str, Any]) -> dict[str, Any]:
    """MultiRC: drop the HTML of its paragraphs and questions (<br> becomes a space, <b> vanishes)."""

    def clean(text: str) -> str:
        return re.sub(r"</?b>", "", text.replace("<br>", " "))

    return {**row, **{k: clean(str(row[k])) for k in ("question", "answer", "paragraph")}}


def _mark_span(text: str, span: str, word_index: int, mark: str) -> str:
    """Surround `span`, starting at whitespace-word `word_index`, with `mark`; unchanged if absent."""
    pattern = rf"^((?:\S+\s){{{word_index}}})({re.escape(span)})"
    return re.sub(pattern, rf"\g<1>{mark} \g<2> {mark}", text)


def mark_wsc_spans(row: Mapping[str, Any]) -> dict[str, Any]:
    """WSC as T5/DePT: ' * ' around the noun (span1) and ' # ' around the pronoun (span2)."""
    i1, i2 = int(row["span1_index"]), int(row["span2_index"])
    text = _mark_span(str(row["text"]), str(row["span1_text"]), i1, "*")
    text = _mark_span(text, str(row["span2_text"]), i2 + 2 * (i1 < i2), "#")  # span1 added 2 words
    return {**row, "text": text}


BINARY = ("0", "1")
TASKS: tuple[TextTask, ...] = (
    TextTask(
        "cola",
        ("sentence",),
        BINARY,
        ("matthews_correlation",),
        "small",
        (GLUE_HUB, "cola"),
        class_names=("unacceptable", "acceptable"),
    ),
    TextTask(
        "sst2", ("sentence",), BINARY, ("accuracy",), "large", (GLUE_HUB, "sst2"), class_names=("negative", "positive")
    ),
    TextTask(
        "mrpc",
        ("sentence1", "sentence2"),
        BINARY,
        ("accuracy", "f1"),
        "small",
        (GLUE_HUB, "mrpc"),
        class_names=("not_equivalent", "equivalent"),
    ),
    TextTask(
        "qqp",
        ("question1", "question2"),
        BINARY,
        ("accuracy", "f1"),
        "large",
        (GLUE_HUB, "qqp"),
        class_names=("not_duplicate", "duplicate"),
    ),
    TextTask(
        "stsb",
        ("sentence1", "sentence2"),
        (),
        ("pearson", "spearmanr"),
        "small",
        (GLUE_HUB, "stsb"),
        is_regression=True,
    ),
    TextTask(
        "mnli",
        ("premise", "hypothesis"),
        ("0", "1", "2"),
        ("accuracy",),
        "given",
        (GLUE_HUB, "mnli"),
        class_names=("entailment", "neutral", "contradiction"),
        official_splits={"train": "train", "validation": "validation_mismatched", "test": "validation_matched"},
    ),
    TextTask(
        "qnli",
        ("question", "sentence"),
        BINARY,
        ("accuracy",),
        "large",
        (GLUE_HUB, "qnli"),
        class_names=("entailment", "not_entailment"),
    ),
    TextTask(
        "rte",
        ("sentence1", "sentence2"),
        BINARY,
        ("accuracy",),
        "small",
        (GLUE_HUB, "rte"),
        class_names=("entailment", "not_entailment"),
    ),
    TextTask(
        "boolq",
        ("question", "passage"),
        BINARY,
        ("accuracy",),
        "small",
        (SUPER_GLUE_HUB, "boolq"),
        class_names=BOOL_CLASSES,
    ),
    TextTask(
        "cb",
        ("premise", "hypothesis"),
        ("0", "1", "2"),
        ("f1_multiclass", "accuracy"),
        "small",
        (SUPER_GLUE_HUB, "cb"),
        class_names=("entailment", "contradiction", "neutral"),
        paper_metric="accuracy",
    ),
    TextTask(
        "multirc",
        ("question", "answer", "paragraph"),
        BINARY,
        ("f1",),
        "small",
        (SUPER_GLUE_HUB, "multirc"),
        class_names=BOOL_CLASSES,
        prepare=remove_markup,
    ),
    TextTask(
        "wic",
        ("sentence1", "sentence2", "word"),
        BINARY,
        ("accuracy",),
        "small",
        (SUPER_GLUE_HUB, "wic"),
        class_names=BOOL_CLASSES,
    ),
    TextTask(
        "wsc",
        ("text",),
        BINARY,
        ("accuracy",),
        "small",
        (SUPER_GLUE_HUB, "wsc.fixed"),
        class_names=BOOL_CLASSES,
        prepare=mark_wsc_spans,
        extra_fields=("span1_index", "span1_text", "span2_index", "span2_text"),
    ),
)
