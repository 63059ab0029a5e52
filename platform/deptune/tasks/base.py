"""What every task provides: text-to-text formatting, verbalised labels, metrics and splits.

A task turns raw rows (hub or local files) into `Example`s. Seq2seq and causal backbones learn to
generate `Example.target`; encoder backbones classify into `Task.label_names` (or regress, STS-B).
Metrics always compare strings, so generation and a classification head are scored the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Example:
    source: str  # the formatted input text, e.g. "sentence1: ... sentence2: ..."
    target: str  # the verbalised label, e.g. "1" (STS-B: "3.8")


class Task(Protocol):
    name: str
    label_names: tuple[str, ...]  # the verbalisers, index = class id; empty for regression
    metric_names: tuple[str, ...]  # metric_names[0] selects the best step and is the sweep objective
    is_regression: bool

    def format(self, row: Mapping[str, Any]) -> Example: ...

    def compute_metrics(self, predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]: ...


@dataclass(frozen=True)
class TaskSplits:
    """The three splits every run sees: train to fit, validation to select the step, test to report."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
