"""Extractive QA as text-to-text: SQuAD as T5 formats it, ReCoRD as the DePT code does, both scored by the DePT
code's SQuAD metric. Two of the six source tasks of MPT's source stage (MNLI, QNLI, QQP, SST-2, SQuAD, ReCoRD).

Reference: google-research/text-to-text-transfer-transformer `t5/data/preprocessors.py` (`squad`);
ZhengxiangShi/DePT `src/tasks.py` (`Squad`, `SuperGLUERecord`, `pad_punctuation`) and its `src/metrics.py`
`squad` (T5's `qa_utils`: normalise, then exact match and token F1).
- SQuAD: "question: {q} context: {c}" with punctuation padded by spaces (T5's `_pad_punctuation`), the source
  of T5's `squad` and of DePT's (and ATTEMPT's) `Squad`; the target is T5's, the first answer padded the same
  way, scored against every given answer. DePT's and ATTEMPT's `Squad` pad `example['answers']`, the hub's
  answers dict, so their target is that dict's text: a bug, not followed.
- ReCoRD: "record query: {query} entities: {e1, e2, ...} passage: {passage}" with the `@highlight`
  markers turned into sentence breaks; one example per answer (every split, as the official code
  duplicates), "<unk>" when a row has none; each scored against all the row's answers (ReCoRD's own
  metric; DePT's trainer, which passes no `data_info`, scores each copy against its own answer only).
- Metrics on the 0-1 scale: `em` and `f1`, each the best over the answers, averaged over examples.
  metric_names[0] is what DePT selects by: em for SQuAD, f1 for ReCoRD (`TASK_TO_METRICS`).
- Splits: both are DePT "large" tasks: 1,000 training rows held out as validation, the official
  validation set as the test.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deptune.tasks.base import ANSWER_SEPARATOR, Example

SQUAD_HUB = ("rajpurkar/squad", "plain_text")
RECORD_HUB = ("aps/super_glue", "record")


def pad_punctuation(text: str) -> str:
    """T5's `_pad_punctuation`: spaces around everything but letters, numbers, marks, '_' and whitespace."""
    import regex  # \p{..} classes; a transformers dependency

    text = regex.sub(r"([^_\s\p{N}\p{L}\p{M}])", r" \1 ", str(text))
    return regex.sub(r"\s+", " ", text)


def answer_texts(value: Any) -> list[str]:
    """The answers of a row: SQuAD's {"text": [...]} from the hub, a list, or one string."""
    if isinstance(value, Mapping):
        value = value.get("text", [])
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value]


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (T5's `normalize_squad`): lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, answer: str) -> float:
    pred, gold = prediction.split(), answer.split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """em and f1 (0-1), each the best over an example's answers (`references` hold them tab-joined)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} targets")
    if not references:
        raise ValueError("no predictions to score")
    em = f1 = 0.0
    for prediction, reference in zip(predictions, references):
        pred = normalize_answer(prediction)
        answers = [normalize_answer(a) for a in reference.split(ANSWER_SEPARATOR)]
        em += max(float(pred == a) for a in answers)
        f1 += max(_f1(pred, a) for a in answers)
    return {"em": em / len(references), "f1": f1 / len(references)}


@dataclass(frozen=True)
class QATask:
    """A generative QA task; implements the `Task` protocol (and what the loaders need of a benchmark task)."""

    name: str
    inputs: tuple[str, ...]
    metric_names: tuple[str, ...]
    paper_metric: str
    hub: tuple[str, str]
    split_rule: str = "large"
    official_splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation"})
    label_names: tuple[str, ...] = ()
    is_regression: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        return self.inputs + ("answers",)

    def format(self, row: Mapping[str, Any]) -> Example:
        return self.format_all(row)[0]

    def format_all(self, row: Mapping[str, Any]) -> list[Example]:
        missing = [f for f in self.fields if row.get(f) is None]
        if missing:
            raise ValueError(f"{self.name}: row lacks field(s) {', '.join(missing)}")
        return squad_examples(row) if self.name == "squad" else record_examples(row)

    def compute_metrics(self, predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
        scores = qa_scores(predictions, targets)
        return {name: scores[name] for name in self.metric_names}


def squad_examples(row: Mapping[str, Any]) -> list[Example]:
    answers = tuple(pad_punctuation(a) for a in answer_texts(row["answers"]))
    if not answers:
        raise ValueError("squad: row has no answer")
    source = " ".join(["question:", pad_punctuation(row["question"]), "context:", pad_punctuation(row["context"])])
    return [Example(source=source, target=answers[0], answers=answers)]  # the official strings, spaces and all


def record_examples(row: Mapping[str, Any]) -> list[Example]:
    passage = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", str(row["passage"]))
    passage = re.sub(r"\n@highlight\n", ". ", passage)
    entities = row["entities"] if not isinstance(row["entities"], str) else row["entities"].split(ANSWER_SEPARATOR)
    source = f"record query: {row['query']} entities: {', '.join(map(str, entities))} passage: {passage}"
    answers = tuple(answer_texts(row["answers"])) or ("<unk>",)
    return [Example(source=source, target=answer, answers=answers) for answer in answers]


QA_TASKS: tuple[QATask, ...] = (
    QATask("squad", ("question", "context"), ("em", "f1"), "f1", SQUAD_HUB),
    QATask("record", ("passage", "query", "entities"), ("f1", "em"), "f1", RECORD_HUB),
)
