"""Specs: one YAML file, strictly typed. Each section's model lives with its layer.

A run spec (backbone, task, method, train, resources) describes one training run; a sweep spec adds
`search`, `sweep`, `study` and `tracking` (`deptune.sweep.config.SweepSpec`). `load_spec` returns
whichever the file is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from deptune.methods import MethodConfig
from deptune.models import BackboneConfig
from deptune.spec_base import StrictModel
from deptune.tasks.config import TaskConfig
from deptune.train.config import ResourcesConfig, TrainConfig


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
        return self


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


def parse_spec(data: Any, source: str = "<spec>", kind: type[RunSpec] | None = None) -> RunSpec:
    """Validate a spec's data: a sweep spec when it has a sweep section (or `kind` says so), else a run spec."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"<root>: expected a mapping of sections, got {type(data).__name__}"])
    if kind is None:
        from deptune.sweep.config import SweepSpec  # the sweep layer builds on this module
        kind = SweepSpec if any(k in data for k in SWEEP_SECTIONS) else RunSpec
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


def load_spec(path: str | Path, overrides: list[str] | None = None, kind: type[RunSpec] | None = None) -> RunSpec:
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
