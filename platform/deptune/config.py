"""Specs: one YAML file, strictly typed. Each section's model lives with its layer.

A run spec (backbone, task, method, train, resources) describes one training run; a sweep spec adds
`search`, `sweep`, `study` and `tracking` (`deptune.sweep.config.SweepSpec`); a source spec (`source_tasks`
instead of `task`) is MPT's multitask source stage. `load_spec` returns whichever the file is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from deptune.methods import MethodConfig, MPTConfig
from deptune.models import BackboneConfig
from deptune.spec_base import StrictModel
from deptune.tasks.config import TaskConfig
from deptune.train.config import DistillConfig, ResourcesConfig, TrainConfig


class RunSpec(StrictModel):
    """One training run: backbone + task + method + train settings."""

    backbone: BackboneConfig
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> "RunSpec":
        if self.train.batch_size % self.resources.workers:
            raise ValueError(f"train.batch_size: {self.train.batch_size} must be divisible by resources.workers "
                             f"({self.resources.workers}): each rank takes an equal slice of the global batch")
        if getattr(self.method, "source_tasks", None):
            raise ValueError("method.source_tasks: a run trains one task; a source adapter over several tasks "
                             "comes from `deptune mpt-source` (a spec with source_tasks)")
        return self


class SourceSpec(StrictModel):
    """MPT's source stage (`deptune mpt-source`): a vanilla-PT teacher per source task (`teacher` settings),
    then P* and one (u, v) per task trained on the task-balanced mixture with the task loss plus
    distillation from the teachers (`train` and `distill` settings). In-process, one device."""

    backbone: BackboneConfig
    source_tasks: list[TaskConfig] = Field(min_length=1, description="the source tasks, each with its data")
    method: MethodConfig
    teacher: TrainConfig = Field(TrainConfig(), description="each teacher's training run (vanilla PT, l tokens)")
    train: TrainConfig = Field(TrainConfig(), description="the multitask stage; batch_size is split evenly "
                                                         "across the tasks; the source adapter lands in "
                                                         "output_dir/best, the teachers in output_dir/teachers")
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="after")
    def _balanced_and_fresh(self) -> "SourceSpec":
        names = self.task_names
        if not isinstance(self.method, MPTConfig):
            raise ValueError(f"method.name: the source stage trains mpt, not {self.method.name}")
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"source_tasks.{i}.name: {name} is already a source task; give each task once")
        if self.train.batch_size % len(names):
            raise ValueError(f"train.batch_size: {self.train.batch_size} must be divisible by the {len(names)} "
                             f"source tasks (each step takes the same number of examples from each)")
        if self.method.init_from is not None:
            raise ValueError("method.init_from: the source stage starts fresh; init_from is for target runs")
        if self.method.source_tasks and self.method.source_tasks != names:
            raise ValueError(f"method.source_tasks: {self.method.source_tasks} differs from source_tasks {names}; "
                             f"leave it out (it is filled from source_tasks)")
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.source_tasks]

    def student_method(self) -> MPTConfig:
        return self.method.model_copy(update={"source_tasks": self.task_names})


class SpecError(ValueError):
    """A spec file that does not validate; `errors` holds one 'key.path: message' line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source, self.errors = source, errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


SWEEP_SECTIONS = ("search", "sweep", "study", "tracking")
_KEYED_MESSAGE = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z_0-9]+)+): (.*)$", re.S)


def _error_line(error: dict[str, Any]) -> str:
    """'key.path: message'; a cross-field check names its own key path at the start of its message."""
    loc = error["loc"]
    # drop pydantic's discriminator tag segment (method.dept.rank -> method.rank)
    parts = [str(p) for i, p in enumerate(loc) if not (i == 1 and loc[0] == "method" and isinstance(p, str)
                                                       and len(loc) >= 2)]
    message = error["msg"].removeprefix("Value error, ")
    keyed = _KEYED_MESSAGE.match(message)
    if keyed and (not parts or keyed.group(1).startswith(parts[0])):
        return f"{keyed.group(1)}: {keyed.group(2)}"
    return f"{'.'.join(parts) or '<root>'}: {message}"


def parse_spec(data: Any, source: str = "<spec>", kind: type[StrictModel] | None = None) -> Any:
    """Validate a spec's data: a sweep spec when it has a sweep section, a source spec when it has
    source_tasks (or `kind` says which), else a run spec."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"<root>: expected a mapping of sections, got {type(data).__name__}"])
    if kind is None:
        from deptune.sweep.config import SweepSpec  # the sweep layer builds on this module
        kind = SweepSpec if any(k in data for k in SWEEP_SECTIONS) else SourceSpec if "source_tasks" in data \
            else RunSpec
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, [_error_line(e) for e in exc.errors()]) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key.path=value` overrides (value parsed as YAML), e.g. train.steps=50."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError("--set", [f"{item!r}: expected key.path=value"])
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None, kind: type[StrictModel] | None = None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), ["<file>: no such file"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"<yaml>: {exc}"]) from None
    if overrides:
        data = apply_overrides(data, overrides)
    if isinstance(data, dict) and any(k in data for k in SWEEP_SECTIONS) and isinstance(data.get("study", {}), dict):
        data["study"] = {"name": path.stem, **data.get("study", {})}  # a sweep's study is named after its file
    return parse_spec(data, str(path), kind)
