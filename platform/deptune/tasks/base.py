"""What every task provides: text-to-text formatting, verbalised labels, metrics and splits.

A task turns raw rows (hub or local files) into `Example`s. Seq2seq and causal backbones learn to
generate `Example.target`; encoder backbones classify into `Task.label_names` (or regress, STS-B).
Metrics always compare strings, so generation and a classification head are scored the same way.
Extractive QA (SQuAD, ReCoRD) has several acceptable answers per example: the model learns one
(`target`) and is scored against all of them (`answers`, carried to the metric by `Example.reference`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ANSWER_SEPARATOR = "\t"  # joins a QA example's answers in `Example.reference` (never inside one: whitespace is
# collapsed by the QA formats, and a TSV field holds no tab)


@dataclass(frozen=True)
class Example:
    source: str  # the formatted input text, e.g. "sentence1: ... sentence2: ..."
    target: str  # the verbalised label, e.g. "1" (STS-B: "3.8"); QA: the answer trained on
    answers: tuple[str, ...] = ()  # QA: every acceptable answer (scored by the best match); else empty

    @property
    def reference(self) -> str:
        """What a prediction is scored against: the target, or a QA example's answers joined by a tab."""
        return ANSWER_SEPARATOR.join(self.answers) if self.answers else self.target


class Task(Protocol):
    name: str
    label_names: tuple[str, ...]  # the verbalisers, index = class id; empty for regression and QA
    metric_names: tuple[str, ...]  # metric_names[0] selects the best step and is the sweep objective
    paper_metric: str  # the metric the papers' tables report (DePT Table 1), shown beside the objective
    is_regression: bool

    def format(self, row: Mapping[str, Any]) -> Example: ...

    def compute_metrics(self, predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]: ...


@dataclass(frozen=True)
class TaskSplits:
    """The three splits every run sees: train to fit, validation to select the step, test to report."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
