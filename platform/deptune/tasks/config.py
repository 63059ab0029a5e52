"""The `task:` section of a spec: which task, and where its data comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from deptune.spec_base import StrictModel
from deptune.tasks.registry import TASK_NAMES


class DataFiles(StrictModel):
    """Local files per split (CSV, TSV or JSONL, picked by suffix)."""

    train: Path
    validation: Path | None = None
    test: Path | None = None


class TaskConfig(StrictModel):
    name: str = Field(description="registered task: synthetic (synthetic_a, synthetic_b), cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, "
                                  "boolq, cb, multirc, wic, wsc")
    source: Literal["auto", "hub", "glue_dir", "files", "builtin"] = "auto"
    hub_id: str | None = Field(None, description="override the hub dataset (default nyu-mll/glue, aps/super_glue)")
    data_dir: Path | None = Field(None, description="a GLUE-layout folder holding train.tsv and dev.tsv")
    files: DataFiles | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="task field -> column name in the files")
    max_train_samples: PositiveInt | None = None
    max_eval_samples: PositiveInt | None = None
    k_shot: PositiveInt | None = Field(None, description="few-shot: train on k examples per class of the train "
                                                          "split (drawn with split_seed); validation and test as usual")
    validation_split: Literal["paper", "whole"] = Field(
        "paper", description="paper: DePT's split rule (small tasks halve the validation file into validation "
                             "and test; large tasks hold 1,000 training examples out as validation and test on "
                             "the validation file); whole: the validation file is the validation split as given, "
                             "and the test split is files.test (none without it: no test scores)")
    split_seed: int = 42
    synthetic_size: PositiveInt = 2000

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in TASK_NAMES:
            raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}")
        return name

    @model_validator(mode="after")
    def _one_data_source(self) -> "TaskConfig":
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
