"""A built-in sentiment-like task that needs no download and that a tiny model learns in seconds.

Each sentence mixes neutral filler words with two to four words of one polarity, which is the label:
a task a frozen random tiny network plus a trained prompt can learn, so the demo shows learning. Deterministic for a seed, so runs and tests are reproducible offline.

Two related variants judge polarity over half of the polar words each (`synthetic_a`, `synthetic_b`):
source tasks for multitask transfer whose union is `synthetic` (MPT's offline tests).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from deptune.tasks import metrics
from deptune.tasks.base import Example, TaskSplits

POSITIVE_WORDS = ("good", "great", "fine", "happy", "bright", "warm", "lovely", "superb", "calm", "nice")
NEGATIVE_WORDS = ("bad", "awful", "poor", "sad", "dark", "cold", "ugly", "dull", "grim", "nasty")
FILLER_WORDS = (
    "the",
    "a",
    "movie",
    "book",
    "day",
    "food",
    "song",
    "room",
    "city",
    "game",
    "was",
    "is",
    "very",
    "quite",
    "and",
    "but",
    "so",
    "really",
    "it",
    "this",
    "that",
    "my",
    "our",
)
WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS


class SyntheticSentiment:
    label_names = ("0", "1")
    class_names = ("negative", "positive")  # what label 0 and 1 mean: a served model's `label_name`
    metric_names = ("accuracy", "f1")
    paper_metric = "accuracy"
    is_regression = False

    def __init__(
        self,
        name: str = "synthetic",
        positive: Sequence[str] = POSITIVE_WORDS,
        negative: Sequence[str] = NEGATIVE_WORDS,
    ) -> None:
        self.name, self.positive, self.negative = name, tuple(positive), tuple(negative)

    def format(self, row: Mapping[str, Any]) -> Example:
        return Example(source=f"sentence: {row['sentence']}", target=str(row["label"]))

    def compute_metrics(self, predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
        return metrics.compute(self.metric_names, predictions, targets, self.label_names)

    def rows(self, size: int, seed: int) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        rows = []
        for _ in range(size):
            positive = rng.random() < 0.5
            words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(2, 5))]
            for _ in range(rng.randint(2, 4)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(self.positive if positive else self.negative))
            rows.append({"sentence": " ".join(words), "label": int(positive)})
        return rows

    def splits(self, size: int, seed: int) -> TaskSplits:
        """80/10/10 split of `size` generated rows."""
        examples = [self.format(r) for r in self.rows(size, seed)]
        n_eval = max(1, size // 10)
        return TaskSplits(
            train=examples[2 * n_eval :], validation=examples[:n_eval], test=examples[n_eval : 2 * n_eval]
        )


SYNTHETIC_TASKS = (
    SyntheticSentiment(),
    SyntheticSentiment("synthetic_a", POSITIVE_WORDS[:5], NEGATIVE_WORDS[:5]),
    SyntheticSentiment("synthetic_b", POSITIVE_WORDS[5:], NEGATIVE_WORDS[5:]),
)
