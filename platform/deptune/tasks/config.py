"""The `task:` section of a spec: which task, and where its data comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from deptune.spec_base import StrictModel
from deptune.tasks.catalog import TASK_NAMES


class DataFiles(StrictModel):
    """Local files per split (CSV, TSV or JSONL, picked by suffix)."""

    train: Path
    validation: Path | None = None
    test: Path | None = None


class FewShotConfig(StrictModel):
    """Train on k examples of the train split. `per` says what k counts, and has no default on purpose:
    DePT's and FewGLUE's "k-shot" is k in all (`per: total`), while `per: class` takes k of every class."""

    k: PositiveInt = Field(description="training examples: in all (per: total) or of each class (per: class)")
    per: Literal["total", "class"] = Field(
        description="total: k over all classes, by the official DePT train.py loop (a seeded shuffle, then up to "
        "k // n_classes per class, slot k open to any class: k examples, except k // n_classes * "
        "n_classes where k % n_classes >= 2, e.g. 30 for CB at k = 32); class: k per class"
    )
    exact_k: bool = Field(
        False,
        description="per: total only; true opens the last k % n_classes slots to any "
        "class, so the draw is exactly k (the official loop's draw plus the "
        "next examples of the shuffle); false: the official loop's count",
    )
    seed: int = Field(
        42,
        ge=0,
        lt=2**32,
        description="the draw's seed; the official code draws with the run's seed (HF's default "
        "42 in its scripts), so the paper specs set this and train.seed to 42; vary "
        "it for other draws",
    )

    @model_validator(mode="after")
    def _exact_k_counts_a_total(self) -> FewShotConfig:
        if self.exact_k and self.per == "class":
            raise ValueError(
                "task.few_shot.exact_k: per: class always takes exactly k of each class; exact_k is for per: total"
            )
        return self


class TaskConfig(StrictModel):
    name: str = Field(
        description="registered task: synthetic (synthetic_a, synthetic_b), cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, "
        "boolq, cb, multirc, wic, wsc, squad, record"
    )
    source: Literal["auto", "hub", "glue_dir", "files", "builtin"] = "auto"
    hub_id: str | None = Field(None, description="override the hub dataset (default nyu-mll/glue, aps/super_glue)")
    data_dir: Path | None = Field(None, description="a GLUE-layout folder holding train.tsv and dev.tsv")
    files: DataFiles | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="task field -> column name in the files")
    max_train_samples: PositiveInt | None = None
    max_eval_samples: PositiveInt | None = None
    few_shot: FewShotConfig | None = Field(
        None, description="few-shot: train on k drawn examples of the train split; validation and test as usual"
    )
    validation_split: Literal["paper", "whole"] = Field(
        "paper",
        description="paper: DePT's split rule (small tasks halve the validation file into validation "
        "and test; large tasks hold 1,000 training examples out as validation and test on "
        "the validation file); whole: the validation file is the validation split as given, "
        "and the test split is files.test (none without it: no test scores)",
    )
    split_seed: int = Field(42, ge=0, lt=2**32, description="the seed of DePT's split shuffle, used as given")
    synthetic_size: PositiveInt = 2000

    @model_validator(mode="before")
    @classmethod
    def _renamed_k_shot(cls, data: Any) -> Any:
        if isinstance(data, dict) and "k_shot" in data:
            k = data["k_shot"]
            raise ValueError(
                f"task.k_shot: renamed, because k was per class where DePT's and FewGLUE's k is the "
                f"total; write task.few_shot: {{k: {k}, per: class}} for the old meaning ({k} of each "
                f"class) or {{k: {k}, per: total}} for {k} examples in all"
            )
        return data

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in TASK_NAMES:
            raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}")
        return name

    @model_validator(mode="after")
    def _one_data_source(self) -> TaskConfig:
        if self.data_dir is not None and self.files is not None:
            raise ValueError("give either task.data_dir (GLUE layout) or task.files, not both")
        return self

    @property
    def resolved_source(self) -> str:
        if self.source != "auto":
            return self.source
        if self.name.startswith("synthetic"):  # synthetic, synthetic_a, synthetic_b
            return "builtin"
        if self.data_dir is not None:
            return "glue_dir"
        if self.files is not None:
            return "files"
        return "hub"
